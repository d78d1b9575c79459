"""The notebook (the nilearn example redone with roidask) runs on the real Haxby slice."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import jupytext
import matplotlib.image
import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# figures the notebook shows: mean EPI, p-values, thresholded p-values, mask AND, dilated
# mask, two ROIs, boxplots
N_FIGURES = 8


def test_ipynb_is_in_sync_with_its_jupytext_script():
    script = jupytext.read(NOTEBOOKS / "roi_extraction.py")
    notebook = nbformat.read(NOTEBOOKS / "roi_extraction.ipynb", as_version=4)
    assert [c.source for c in script.cells] == [c.source for c in notebook.cells], (
        "notebooks/roi_extraction.ipynb is out of date: run "
        "`jupytext --sync notebooks/roi_extraction.py`"
    )


def test_committed_ipynb_has_no_outputs():
    notebook = nbformat.read(NOTEBOOKS / "roi_extraction.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), (
        "notebooks/roi_extraction.ipynb has outputs: strip them before committing"
    )


def test_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary store goes here
    nb = jupytext.read(NOTEBOOKS / "roi_extraction.py")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    outputs = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    ]
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    assert "components: 5" in text
    assert "'roi': 5" in text and "(108, 9)" in text
    (rois,) = [
        out["data"]["text/plain"]
        for out in outputs
        if out.get("output_type") == "execute_result" and "n_voxels" in out["data"]["text/plain"]
    ]
    assert "label" in rois and "n_voxels" in rois
    # the figures are shown inline, as PNG images drawn from the data
    pngs = [
        base64.b64decode(out["data"]["image/png"])
        for out in outputs
        if out.get("output_type") == "display_data" and "image/png" in out.get("data", {})
    ]
    assert len(pngs) == N_FIGURES
    for png in pngs:
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400
        assert pixels[..., :3].std() > 0.05  # not blank
    # the temporary folder (the zarr store) is removed at the end: nothing is left in
    # TMPDIR (the working directory too) but a matplotlib cache, if HOME is not writable
    assert "removed: True" in text
    left = [p.name for p in tmp_path.iterdir() if not p.name.startswith("matplotlib-")]
    assert left == []
