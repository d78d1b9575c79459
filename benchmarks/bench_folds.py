"""The folds' extra cost: ``roidask run --roi-definition`` same vs split-half vs
leave-one-run-out on the seed-shaped subject, wall time and peak memory.

Run on demand (not part of the tests)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_folds.py [--repeats 3]
    # a small check of the script itself (a 20x24x16 subject, 1 round):
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_folds.py --small --repeats 1

The subject is bench_pipeline.py's (40x64x64x1452 int16, the real Haxby condition
sequence: 12 runs; generated once into ``benchmarks/data/``). Each case is a whole
``roidask run --no-plots`` process (peak RSS of the process tree sampled every 20 ms,
bench_pipeline.measure); the cases are interleaved in rounds (same, split-half,
leave-one-run-out, ``--repeats`` times) and the table gives medians, the ratio to
``same`` taken within each round, and the pipeline's own stage timings from
``provenance.json`` (``statistics``: the one pass and the t-tests; ``rois``;
``extraction``). Every fold comes from the same single read: the extra cost is the
per-run moments (4 float64 maps per further run in the pass's running partial), the
fold t-tests, ROIs and extractions, and the per-fold outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from bench_pipeline import DATA, VENV_BIN, measure, subject

SCHEMES = ("same", "split-half", "leave-one-run-out")


def small_subject() -> Path:
    from roidask.datasets import make_synthetic_subject

    root = DATA / "sub-small-folds"
    if not (root / "truth.json").exists():
        make_synthetic_subject(root, shape=(20, 24, 16), seed=0, effect_pct=5.0, overwrite=True)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a 20x24x16 subject (a check)")
    args = parser.parse_args()
    root = small_subject() if args.small else subject()
    bold, labels, mask = root / "bold.nii.gz", root / "labels.txt", root / "mask_vt.nii.gz"
    roidask = str(VENV_BIN / "roidask")
    out = DATA / "out-folds"
    rounds = {s: [] for s in SCHEMES}
    for _ in range(args.repeats):
        for scheme in SCHEMES:
            shutil.rmtree(out, ignore_errors=True)
            cmd = [roidask, "run", str(bold), "--labels", str(labels), "--mask", str(mask)]
            cmd += ["--out", str(out), "--no-plots", "--quiet", "--roi-definition", scheme]
            wall, rss, _ = measure(cmd)
            prov = json.loads((out / "provenance.json").read_text())
            n_rois = prov.get("fold_n_rois", [prov["n_rois"]])
            rounds[scheme].append((wall, rss, prov["timings_s"], n_rois))
    shutil.rmtree(out, ignore_errors=True)
    print(f"subject: {bold}  ({args.repeats} rounds, medians)")
    header = (
        f"{'roi_definition':<18} {'folds':>5} {'wall s':>7} {'x same':>7} {'peak MB':>8} "
        f"{'statistics s':>12} {'rois s':>7} {'extraction s':>12}"
    )
    print(header)
    print("-" * len(header))
    for scheme in SCHEMES:
        runs = rounds[scheme]
        ratio = statistics.median(r[0] / s[0] for r, s in zip(runs, rounds["same"], strict=True))
        stage = {
            k: statistics.median(r[2].get(k, 0.0) for r in runs)
            for k in ("statistics", "rois", "extraction")
        }
        print(
            f"{scheme:<18} {len(runs[0][3]):>5} {statistics.median(r[0] for r in runs):>7.2f} "
            f"{ratio:>7.2f} {statistics.median(r[1] for r in runs):>8.0f} "
            f"{stage['statistics']:>12.2f} {stage['rois']:>7.2f} {stage['extraction']:>12.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
