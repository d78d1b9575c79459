"""``roidask run`` of this checkout against another commit's, on the seed-shaped subject:
did a change make a run slower?

Run on demand (not part of the tests)::

    git worktree add /tmp/roidask-old COMMIT
    .venv/bin/python benchmarks/bench_ab_run.py --old /tmp/roidask-old [--rounds 8]

Both run as ``roidask run`` of the seed-shaped subject with its ventral-temporal mask
(``benchmarks/data/sub-01``, made by ``bench_wholebrain.py``), ``--no-plots``, each
from compiled bytecode (``_bytecode.py``) and the same environment, the package taken
from either tree (``PYTHONPATH``). The order alternates from round to round (the first
process of a round can meet a colder page cache). Prints each round and the per-round
ratio new/old, and their medians.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUBJECT = HERE / "data" / "sub-01"
ROIDASK = HERE.parent / ".venv" / "bin" / "roidask"


def _run(tree: Path, out: Path, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(ROIDASK), "run", str(SUBJECT / "bold.nii.gz"), "--labels",
           str(SUBJECT / "labels.txt"), "--mask", str(SUBJECT / "mask_vt.nii.gz"),
           "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, env={**env, "PYTHONPATH": str(tree)}, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the other commit's checkout")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    if not (SUBJECT / "bold.nii.gz").is_file():
        raise SystemExit(f"{SUBJECT}: run benchmarks/bench_wholebrain.py --cases seed-vt first")
    trees = {"old": args.old.resolve(), "new": HERE.parent}
    for tree in trees.values():
        compileall.compile_dir(tree / "roidask", quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times: dict[str, list[float]] = {"old": [], "new": []}
    print(f"{'round':>5}  {'old s':>6}  {'new s':>6}  {'new/old':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name in order:
                times[name].append(_run(trees[name], Path(tmp) / name, env))
            old, new = times["old"][-1], times["new"][-1]
            print(f"{r + 1:>5}  {old:>6.2f}  {new:>6.2f}  {new / old:>7.3f}", flush=True)
    ratios = [n / o for n, o in zip(times["new"], times["old"], strict=True)]
    old_m, new_m = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"median  {old_m:>5.2f}  {new_m:>6.2f}  {statistics.median(ratios):>7.3f}"
          f"  (ratios {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
