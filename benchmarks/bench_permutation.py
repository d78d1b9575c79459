"""Sign-flip permutation t-test (max-t FWE): roidask on a 2-worker LocalCluster vs nilearn.

Run on demand (not part of the tests)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_permutation.py \\
        [--subjects 16 64 256] [--n-perm 10000] [--rounds 3] [--nilearn-max-rounds-subjects 64]

Subjects' maps are generated once on the seed grid (40 x 64 x 64 voxels of
3 mm): smooth Gaussian noise plus a blob of effect, written as one float32
``.nii.gz`` per subject, and a brain-shaped (ellipsoid) mask of ~40k voxels.
Each round runs in a fresh subprocess, so its peak memory is its own:

* **roidask**: :func:`roidask.ops.permutation.permuted_ttest_1samp` on the
  list of files and the mask, computed on an embedded ``LocalCluster`` of 2
  single-threaded worker processes on 127.0.0.1 (cluster start-up, with
  roidask imported on the workers, timed apart: "start_s");
* **nilearn**: ``NiftiMasker(mask).fit().transform(files)`` then
  ``permuted_ols(ones, maps, n_perm, two_sided_test=True, n_jobs=2)``.

Both time from the files to the FWE-corrected -log10 p in memory ("run_s"); for
nilearn the ``permuted_ols`` part alone is also shown. Peak memory is sampled
every 50 ms over the whole process tree (dask's nannies and workers, joblib's
loky workers): the sum of RSS (counts shared pages once per process) and of
PSS (shared pages split between the processes that map them). Figures are
medians over ``--rounds`` rounds; nilearn is run once above
``--nilearn-max-rounds-subjects`` subjects (it takes minutes there). The last
column checks that the two methods' FWE p-values (different random flips;
max-t, and cluster size and mass with ``--cluster-threshold``) agree within
Monte Carlo error, ``|p_a - p_b| <= 4 sqrt(2 p (1 - p) / n_perm) + 1 / n_perm``
at every voxel.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (40, 64, 64)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
MAX_SUBJECTS = 256


# -- data --------------------------------------------------------------------------------------
def brain_mask() -> np.ndarray:
    """An ellipsoid of ~40k voxels centred in the 40 x 64 x 64 grid."""
    g = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE, dtype=float) - 1) / 2
    semi = np.array([17.0, 28.0, 20.0])
    return (((g - centre[:, None, None, None]) / semi[:, None, None, None]) ** 2).sum(0) <= 1


def write_maps(folder: Path, n_subjects: int) -> tuple[list[Path], Path]:
    import nibabel as nib
    from scipy import ndimage

    rng = np.random.default_rng(0)
    mask = brain_mask()
    g = np.indices(SHAPE).astype(float)
    blob = np.exp(-(((g - np.array([12, 20, 30])[:, None, None, None]) ** 2).sum(0)) / 18)
    paths = []
    for i in range(n_subjects):
        noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.5) * 4
        data = ((noise + 0.6 * blob) * mask).astype(np.float32)
        paths.append(folder / f"sub-{i:03d}_tstat.nii.gz")
        nib.save(nib.Nifti1Image(data, AFFINE), paths[-1])
    mask_path = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), mask_path)
    return paths, mask_path


# -- one round, in a subprocess ------------------------------------------------------------------
def round_roidask(paths, mask_path, args) -> dict:
    import importlib

    from distributed import Client, LocalCluster

    from roidask.ops.permutation import permuted_ttest_1samp
    from roidask.pipeline import compute

    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,  # no "worker still alive, killing" at shutdown
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(importlib.import_module, "roidask.ops.permutation")
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = permuted_ttest_1samp(
            paths,
            mask_img=mask_path,
            n_perm=args.n_perm,
            seed=0,
            cluster_threshold=args.cluster_threshold,
        )
        (res,) = compute(ds)
        run_s = time.perf_counter() - t0
    mask = res["mask"].values
    _save(args.out, {k: res[k].values[mask] for k in res.data_vars if k.startswith("logp_max")})
    return {"run_s": run_s, "cluster_start_s": start_s, "n_voxels": int(mask.sum())}


def _save(out: Path, arrays: dict) -> None:
    np.savez(out, **arrays)


def round_nilearn(paths, mask_path, args) -> dict:
    import warnings

    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices; nothing about the data
        masker = NiftiMasker(str(mask_path)).fit()
        x = masker.transform([str(p) for p in paths])
        t1 = time.perf_counter()
        res = permuted_ols(
            np.ones((x.shape[0], 1)),
            x,
            n_perm=args.n_perm,
            two_sided_test=True,
            n_jobs=args.workers,
            random_state=0,
            masker=masker if args.cluster_threshold else None,
            threshold=args.cluster_threshold,
            output_type="dict",
        )
    t2 = time.perf_counter()
    _save(args.out, {k: v[0] for k, v in res.items() if k.startswith("logp_max")})
    return {"run_s": t2 - t0, "permuted_ols_s": t2 - t1, "n_voxels": int(x.shape[1])}


# -- driver --------------------------------------------------------------------------------------
def _tree_memory(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over a process and its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


def measure(method: str, folder: Path, n_subjects: int, args) -> dict:
    out = folder / f"logp-{method}-{n_subjects}.npz"
    cmd = [
        sys.executable,
        __file__,
        "--round",
        method,
        "--data",
        str(folder),
        "--n-subjects",
        str(n_subjects),
        "--n-perm",
        str(args.n_perm),
        "--workers",
        str(args.workers),
        "--out",
        str(out),
    ]
    if args.cluster_threshold:
        cmd += ["--cluster-threshold", str(args.cluster_threshold)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = _tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{method} round failed ({proc.returncode}):\n{stdout}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(peak_rss_mib=peak_rss / 2**20, peak_pss_mib=peak_pss / 2**20, logp=out)
    return result


def _agree(logp_a: Path, logp_b: Path, n_perm: int) -> bool:
    a, b = np.load(logp_a), np.load(logp_b)
    assert set(a.files) == set(b.files), (a.files, b.files)
    for key in a.files:
        pa, pb = 10.0 ** -a[key], 10.0 ** -b[key]
        p = (pa + pb) / 2
        bound = 4 * np.sqrt(2 * p * (1 - p) / n_perm) + 1.0 / n_perm + 1e-12
        if not np.all(np.abs(pa - pb) <= bound):
            return False
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--n-perm", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    parser.add_argument(
        "--nilearn-max-rounds-subjects",
        type=int,
        default=64,
        help="above this many subjects nilearn runs once (it takes minutes)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cluster-threshold",
        type=float,
        help="also cluster-size/mass FWE with this cluster-forming p (nilearn's threshold)",
    )
    parser.add_argument("--data", type=Path, help="folder of generated maps (default: temp)")
    parser.add_argument("--round", choices=("roidask", "nilearn"), help=argparse.SUPPRESS)
    parser.add_argument("--n-subjects", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.round:
        paths = sorted(args.data.glob("sub-*_tstat.nii.gz"))[: args.n_subjects]
        func = round_roidask if args.round == "roidask" else round_nilearn
        result = func(paths, args.data / "mask.nii.gz", args)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="bench-perm-") as tmp:
        folder = args.data or Path(tmp)
        t0 = time.perf_counter()
        have = len(list(folder.glob("sub-*_tstat.nii.gz")))
        if have < max(args.subjects) or not (folder / "mask.nii.gz").exists():
            write_maps(folder, max(args.subjects))
        n_vox = int(brain_mask().sum())
        print(
            f"grid {SHAPE}, mask {n_vox} voxels, {args.n_perm} permutations (two-sided max-t"
            + (f", clusters at p < {args.cluster_threshold}" if args.cluster_threshold else "")
            + "), "
            f"{args.workers} workers, {os.cpu_count()} cores; data written in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        header = (
            f"{'subjects':>8} {'method':<8} {'rounds':>6} {'run_s':>8} {'perm_ols_s':>10} "
            f"{'start_s':>7} {'peak_rss_MiB':>12} {'peak_pss_MiB':>12} {'agree':>6}"
        )
        print(header)
        print("-" * len(header))
        for n in args.subjects:
            rows = {}
            for method in ("roidask", "nilearn"):
                rounds = args.rounds
                if method == "nilearn" and n > args.nilearn_max_rounds_subjects:
                    rounds = 1
                rows[method] = [measure(method, folder, n, args) for _ in range(rounds)]
            agree = _agree(rows["roidask"][-1]["logp"], rows["nilearn"][-1]["logp"], args.n_perm)
            for method, results in rows.items():

                def med(key, results=results):
                    values = [r[key] for r in results if key in r]
                    return statistics.median(values) if values else float("nan")

                print(
                    f"{n:>8} {method:<8} {len(results):>6} {med('run_s'):>8.1f} "
                    f"{med('permuted_ols_s'):>10.1f} {med('cluster_start_s'):>7.1f} "
                    f"{med('peak_rss_mib'):>12.0f} {med('peak_pss_mib'):>12.0f} "
                    f"{'yes' if agree else 'NO':>6}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
