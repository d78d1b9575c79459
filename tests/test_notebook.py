"""The notebook (the nilearn example redone with roidask) runs on the real Haxby slice."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_ipynb_is_in_sync_with_its_jupytext_script():
    script = jupytext.read(NOTEBOOKS / "roi_extraction.py")
    notebook = nbformat.read(NOTEBOOKS / "roi_extraction.ipynb", as_version=4)
    assert [c.source for c in script.cells] == [c.source for c in notebook.cells], (
        "notebooks/roi_extraction.ipynb is out of date: run "
        "`jupytext --sync notebooks/roi_extraction.py`"
    )


def test_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary store goes here
    nb = jupytext.read(NOTEBOOKS / "roi_extraction.py")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    text = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )
    assert "components: 5" in text
    assert "'roi': 5" in text and "(108, 9)" in text
    last = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "label" in last and "n_voxels" in last
