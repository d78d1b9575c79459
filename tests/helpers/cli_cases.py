"""``python cli_cases.py CASES.json RESULTS.json``: run ``roidask`` command lines in this one
process (one start-up for many cases, e.g. under ``setpriv``) and record what each did.

CASES.json holds a list of ``{"argv": [...], "reads": PATH}``; for each case
:func:`roidask.cli.main` runs ``argv`` while every read of NIfTI voxel data
(NiftiSource.read / iter_blocks) appends the file's path to ``reads``. RESULTS.json
receives, per case, ``{"rc": exit status, "stderr": text}`` (``"exception"`` and the
traceback when ``main`` raised).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback

from roidask.cli import main
from roidask.io import nifti

_LOG: list[str | None] = [None]


def _spy(method):
    def reading(self, *args, **kwargs):
        if _LOG[0]:
            with open(_LOG[0], "a") as fh:
                fh.write(f"{self.path}\n")
        return method(self, *args, **kwargs)

    return reading


def run_cases(cases: list[dict]) -> list[dict]:
    nifti.NiftiSource.read = _spy(nifti.NiftiSource.read)
    nifti.NiftiSource.iter_blocks = _spy(nifti.NiftiSource.iter_blocks)
    results = []
    for case in cases:
        _LOG[0] = case.get("reads")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(case["argv"])
            except SystemExit as exc:
                rc = exc.code
            except Exception:  # a bug: the traceback is what the test shows
                rc = "exception"
                traceback.print_exc()
        results.append({"rc": rc, "stderr": err.getvalue()})
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        cases = json.load(fh)
    with open(sys.argv[2], "w") as fh:
        json.dump(run_cases(cases), fh)
