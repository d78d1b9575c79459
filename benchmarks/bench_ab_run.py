"""``roidask run`` of this checkout against another commit's, on the seed-shaped subject:
did a change make a run slower?

Run on demand (not part of the tests)::

    git worktree add /tmp/roidask-old COMMIT
    .venv/bin/python benchmarks/bench_ab_run.py --old /tmp/roidask-old [--rounds 8]
    .venv/bin/python benchmarks/bench_ab_run.py --old /tmp/roidask-old \
        --subject benchmarks/data/wholebrain-int16-scaled --rounds 2

Both run as ``roidask run`` of the seed-shaped subject with its ventral-temporal mask
(``benchmarks/data/sub-01``, made by ``bench_wholebrain.py``; ``--subject``: another
folder it made, e.g. ``wholebrain-int16-scaled``), ``--no-plots``, each
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
import tempfile
from pathlib import Path

from bench_wholebrain import measure

HERE = Path(__file__).resolve().parent
SUBJECT = HERE / "data" / "sub-01"
ROIDASK = HERE.parent / ".venv" / "bin" / "roidask"


def _run(tree: Path, subject: Path, out: Path, env: dict) -> dict:
    """One ``roidask run``: wall s, peak RSS MB and CPU s of the process (as
    ``bench_wholebrain.measure`` takes them)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(ROIDASK), "run", str(subject / "bold.nii.gz"), "--labels",
           str(subject / "labels.txt"), "--mask", str(subject / "mask_vt.nii.gz"),
           "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({**env, "PYTHONPATH": str(tree)})
    try:
        return measure(cmd)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the other commit's checkout")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--subject", type=Path, default=SUBJECT, help="a bench_wholebrain subject")
    args = parser.parse_args()
    if not (args.subject / "bold.nii.gz").is_file():
        raise SystemExit(f"{args.subject}: run benchmarks/bench_wholebrain.py for it first")
    trees = {"old": args.old.resolve(), "new": HERE.parent}
    for tree in trees.values():
        compileall.compile_dir(tree / "roidask", quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    print(f"{args.subject}")
    print(f"{'round':>5}  {'old s':>6}  {'new s':>6}  {'new/old':>7}  old/new CPU s, peak MB")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name in order:
                runs[name].append(_run(trees[name], args.subject, Path(tmp) / name, env))
            old, new = runs["old"][-1], runs["new"][-1]
            print(f"{r + 1:>5}  {old['wall']:>6.2f}  {new['wall']:>6.2f}  "
                  f"{new['wall'] / old['wall']:>7.3f}  {old['cpu']:.1f}/{new['cpu']:.1f}, "
                  f"{old['rss']:.0f}/{new['rss']:.0f}", flush=True)  # fmt: skip
    ratios = [n["wall"] / o["wall"] for n, o in zip(runs["new"], runs["old"], strict=True)]

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    print(f"median  {median('old', 'wall'):>5.2f}  {median('new', 'wall'):>6.2f}  "
          f"{statistics.median(ratios):>7.3f}  {median('old', 'cpu'):.1f}/"
          f"{median('new', 'cpu'):.1f}, {median('old', 'rss'):.0f}/{median('new', 'rss'):.0f}"
          f"  (ratios {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
