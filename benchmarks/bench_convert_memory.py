"""Peak memory of streaming a seed-sized run (40x64x64x1452 int16, 475 MB raw) to a store.

Run on demand::

    .venv/bin/python benchmarks/bench_convert_memory.py

Prints the conversion's wall time and the peak RSS of the converting process
(``resource.getrusage`` of a child process), next to the run's raw size. The
target is a peak well under the raw size (< 400 MB).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def main() -> int:
    argparse.ArgumentParser(
        description="Peak memory of `roidask convert` on a seed-sized run (40x64x64x1452 "
        "int16), generated into benchmarks/data/ on first use."
    ).parse_args()
    sys.path.insert(0, str(HERE))
    from bench_pipeline import subject

    subj = subject()
    out = DATA / "convert-memory.zarr"
    shutil.rmtree(out, ignore_errors=True)
    roidask = str(Path(sys.executable).parent / "roidask")
    start = time.perf_counter()
    subprocess.run(
        [
            roidask,
            "convert",
            str(subj / "bold.nii.gz"),
            "--labels",
            str(subj / "labels.txt"),
            "--out",
            str(out),
            "--quiet",
        ],
        check=True,
    )
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    raw_mb = 40 * 64 * 64 * 1452 * 2 / 2**20
    print("| run | raw MB | wall s | peak RSS MB | peak / raw |")
    print("|---|---|---|---|---|")
    print(
        f"| 40x64x64x1452 int16 | {raw_mb:.0f} | {wall:.1f} | {peak_mb:.0f} | "
        f"{peak_mb / raw_mb:.2f} |"
    )
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
