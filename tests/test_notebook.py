"""The notebooks run: the nilearn example redone with roidask (on the real Haxby slice),
the analysis of a study store with plain xarray (on a small generated study), and the
selection bias of ROIs defined on the volumes they report (shuffled Haxby slice)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import jupytext
import matplotlib.image
import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# figures the notebook shows: mean EPI, p-values, thresholded p-values, mask AND, dilated
# mask, two ROIs, boxplots
N_FIGURES = 8


NAMES = ["roi_extraction", "study_analysis", "selection_bias"]


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_is_in_sync_with_its_jupytext_script(name):
    script = jupytext.read(NOTEBOOKS / f"{name}.py")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert [c.source for c in script.cells] == [c.source for c in notebook.cells], (
        f"notebooks/{name}.ipynb is out of date: run `jupytext --sync notebooks/{name}.py`"
    )


@pytest.mark.parametrize("name", NAMES)
def test_committed_ipynb_has_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), (
        f"notebooks/{name}.ipynb has outputs: strip them before committing"
    )


def execute(name: str) -> tuple[list, list, str, list[bytes]]:
    """Run a notebook: its code cells, their outputs, the printed text, the PNGs shown."""
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    outputs = [out for cell in cells for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    pngs = [
        base64.b64decode(out["data"]["image/png"])
        for out in outputs
        if out.get("output_type") == "display_data" and "image/png" in out.get("data", {})
    ]
    return cells, outputs, text, pngs


def assert_drawn(png: bytes) -> None:
    """A PNG of a figure drawn from data: not tiny, not blank."""
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05


def assert_nothing_left(tmp_path: Path) -> None:
    """Nothing is left in TMPDIR (the working directory) but a matplotlib cache."""
    left = [p.name for p in tmp_path.iterdir() if not p.name.startswith("matplotlib-")]
    assert left == []


def test_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary store goes here
    _, outputs, text, pngs = execute("roi_extraction")
    assert "components: 5" in text
    assert "'roi': 5" in text and "(108, 9)" in text
    (rois,) = [
        out["data"]["text/plain"]
        for out in outputs
        if out.get("output_type") == "execute_result" and "n_voxels" in out["data"]["text/plain"]
    ]
    assert "label" in rois and "n_voxels" in rois
    # the figures are shown inline, as PNG images drawn from the data
    assert len(pngs) == N_FIGURES
    for png in pngs:
        assert_drawn(png)
    # the temporary folder (the zarr store) is removed at the end: nothing is left in
    # TMPDIR (the working directory too) but a matplotlib cache, if HOME is not writable
    assert "removed: True" in text
    assert_nothing_left(tmp_path)


def test_study_notebook_executes(tmp_path, monkeypatch):
    """A generated study of 4 subjects, batch-run, then analysed with plain xarray."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the study and the workers' scratch go here
    cells, outputs, text, pngs = execute("study_analysis")
    # after the first cell (which generates and runs the study), no roidask
    analysis = "\n".join(cell.source for cell in cells[1:])
    assert "roidask" not in analysis.replace("OUT/study.zarr", "")
    assert "subjects: ['sub-01', 'sub-02', 'sub-03', 'sub-04']" in text
    assert "tidy: (144, 4)" in text  # 4 subjects x 4 ROIs x 9 conditions
    tables = [
        out["data"]["text/plain"] for out in outputs if out.get("output_type") == "execute_result"
    ]
    assert any("percent_change" in t and "sub-01" in t for t in tables)  # the tidy table
    assert any("condition" in t and "house" in t and "face" in t for t in tables)  # group
    # the condition means across subjects, and the group's ROI overlap, shown inline
    assert len(pngs) == 2
    for png in pngs:
        assert_drawn(png)
    assert "removed: True" in text
    assert_nothing_left(tmp_path)


def test_selection_bias_notebook_executes(tmp_path, monkeypatch):
    """Null data: "same" reports an effect (t ~ 2) in the selected direction, the
    independent schemes one consistent with 0 (as tests/test_pipeline.py checks)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    _, _, text, pngs = execute("selection_bias")
    assert "runs: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]" in text
    assert "0 2 4 6 8 10" in text  # the folds' runs
    means = {}
    for line in text.splitlines():
        scheme, _, rest = line.partition(": mean ")
        if rest:
            means[scheme] = float(rest.split()[0])
    assert means["same"] > 1
    assert abs(means["split-half"]) < 0.5 and abs(means["leave-one-run-out"]) < 0.5
    (png,) = pngs
    assert_drawn(png)
    assert_nothing_left(tmp_path)
