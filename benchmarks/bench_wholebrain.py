"""Whole-brain subjects: nilearn's example vs ``roidask run``, side by side, and the pass's stages.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_wholebrain.py [--rounds 3] [--dtype int16 float32]
    .venv/bin/python benchmarks/bench_wholebrain.py --small --rounds 1   # check the script

It generates, once (cached in ``benchmarks/data/``, gitignored), with roidask's
generator (``roidask.datasets.make_synthetic_subject``):

* the **whole-brain** subject: fMRIPrep's MNI152NLin2009cAsym res-2 grid, 97x115x97
  voxels of 2 mm, 1452 volumes (the real Haxby condition sequence), int16
  (``--dtype int16-scaled``: int16 with ``scl_slope``/``scl_inter`` using most of the
  int16 range, as nibabel scales float data; ``--dtype float32``: a float32 file), a
  ventral-temporal-like mask of ~100k voxels (``vt_scale=3.25``) holding 16 planted
  face/house regions (``regions_per_hemisphere=4``);
* the **seed-shaped** subject of ``bench_pipeline.py`` (40x64x64x1452 int16), with
  its VT mask (a 35 MB box, kept in memory) and its brain mask (a box of about
  half the volume, written to the temporary file).

Then, in rounds (each ratio is taken within its round: this shared machine's
speed drifts by tens of percent over minutes), for every case: nilearn's example
(``benchmarks/seed_nilearn.py``, the same files; one process at a time, it needs
~16 GB on the whole-brain int16 subject, more than 24 GiB on the scaled one, whose
values it reads as float64: a run killed for lack of memory is reported as such)
and ``roidask run ... --no-plots`` (nilearn's script does not plot), each a whole
process: wall time, peak RSS (see :func:`measure`) and CPU time (of the process and
the children it waited for). It prints every round, then medians and the targets.

Last, the stages of the pass for each subject, from one more ``roidask run``
(the timings it records in ``provenance.json``), next to the floor: decoding the
``.nii.gz`` alone with isal (one sequential stream, as the pass reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _bytecode import use_compiled_bytecode

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
VENV_BIN = Path(sys.executable).parent

WHOLE_BRAIN = {
    "shape": (97, 115, 97),
    "voxel_size_mm": (2.0, 2.0, 2.0),
    "vt_scale": 3.25,
    "regions_per_hemisphere": 4,
}
DTYPES = {  # every generator parameter that differs between them (the cache compares them)
    "int16": {"dtype": "int16", "scl_slope": 1.0, "scl_inter": 0.0},
    "int16-scaled": {"dtype": "int16", "scl_slope": 0.08, "scl_inter": 100.0},
    "float32": {"dtype": "float32", "scl_slope": 1.0, "scl_inter": 0.0},
}
#: --small: the same subjects on smaller grids and 300 volumes, to check the script.
SMALL = {"shape": (48, 56, 48), "voxel_size_mm": (4.0, 4.0, 4.0), "n_volumes": 300}


# -- measuring a whole process --------------------------------------------------------------
def measure(cmd: list[str]) -> dict:
    """Run ``cmd``: wall s, peak RSS MB, CPU s (user + system), its stdout.

    Peak RSS: the largest of the process's own high-water mark (``VmHWM``, exact since
    it started; the kernel's ``ru_maxrss`` would include the benchmark's own memory,
    inherited at fork) and of the process tree's RSS sampled every 20 ms.
    """
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        root = psutil.Process(proc.pid)
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                tree = sum(_rss(p) for p in [root, *root.children(recursive=True)])
                peak = max(peak, tree, _hwm(proc.pid))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.02)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall": wall, "rss": peak / 2**20, "cpu": cpu, "stdout": stdout}


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def _hwm(pid: int) -> int:
    """Peak RSS of a live process since it started (``VmHWM``), bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- subjects -----------------------------------------------------------------------------------
def subject(name: str, **options) -> Path:
    """A generated subject folder, reused while its parameters are the same."""
    from roidask.datasets import make_synthetic_subject

    root = DATA / name
    truth = root / "truth.json"
    if truth.exists():
        params = json.loads(truth.read_text())["parameters"]
        if all(
            params.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in options.items()
        ):
            return root
    print(f"generating {name} {options} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    make_synthetic_subject(root, seed=0, overwrite=True, **options)
    print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return root


def half_volume_mask(root: Path) -> Path:
    """The brain mask of a seed-shaped subject: its box is about half the volume."""
    return root / "brain_mask.nii.gz"


def box_fraction(bold: Path, mask: Path) -> tuple[float, float]:
    """The mask's box, grown as the pass grows it: fraction of the volume, MB (all volumes)."""
    import nibabel as nib
    import numpy as np

    from roidask.io.nifti import NiftiSource
    from roidask.onepass import box_bytes, pass_box

    src = NiftiSource.open(bold)
    inside = np.asarray(nib.load(mask).dataobj) != 0
    box = pass_box(inside, src.affine, fwhm=6.0, dilation_iterations=1)
    voxels = np.prod([s.stop - s.start for s in box])
    kept = src.raw_dtype if src.raw_dtype.itemsize <= 2 else src.dtype  # stored integers
    return voxels / np.prod(src.volume_shape), box_bytes(box, src.n_volumes, kept) / 1e6


# -- commands -----------------------------------------------------------------------------------
def nilearn_cmd(case: dict) -> list[str]:
    return [sys.executable, str(HERE / "seed_nilearn.py"), *map(str, case["files"])]


def roidask_cmd(case: dict, out: Path) -> list[str]:
    bold, labels, mask = case["files"]
    return [
        str(VENV_BIN / "roidask"),
        "run",
        str(bold),
        "--labels",
        str(labels),
        "--mask",
        str(mask),
        "--out",
        str(out),
        "--no-plots",
        "--quiet",
    ]


def decode_cmd(bold: Path) -> list[str]:
    """Decode the whole ``.nii.gz`` with one sequential isal stream; prints wall and CPU s."""
    code = (
        "import sys, time; from roidask.io.nifti import NiftiSource; "
        "s = NiftiSource.open(sys.argv[1]); t, c = time.perf_counter(), time.process_time(); "
        "n = sum(a.nbytes for _, _, a in s.iter_blocks(max(1, 2**25 // s.volume_nbytes), "
        "scaled=False)); print(time.perf_counter() - t, time.process_time() - c, n)"
    )
    return [sys.executable, "-c", code, str(bold)]


# -- tables -------------------------------------------------------------------------------------
def summary(name: str, rounds: list[dict], target_speed: float, target_memory: float) -> list[str]:
    ours = [r["roidask"] for r in rounds]
    ref = [r["nilearn"] for r in rounds]
    med = statistics.median
    if None in ref:  # nilearn ran out of memory
        return [
            f"| {name} | nilearn | killed: out of memory (24 GiB) | | | | |",
            f"| {name} | roidask run | {med(r['wall'] for r in ours):.2f} | "
            f"{med(r['rss'] for r in ours):.0f} | {med(r['cpu'] for r in ours):.1f} | | |",
        ]
    speed = sorted(n["wall"] / o["wall"] for n, o in zip(ref, ours, strict=True))
    memory = sorted(o["rss"] / n["rss"] for n, o in zip(ref, ours, strict=True))
    fast, small = med(speed) >= target_speed, med(memory) <= target_memory
    return [
        f"| {name} | nilearn | {med(r['wall'] for r in ref):.2f} | "
        f"{med(r['rss'] for r in ref):.0f} | {med(r['cpu'] for r in ref):.1f} | | |",
        f"| {name} | roidask run | {med(r['wall'] for r in ours):.2f} | "
        f"{med(r['rss'] for r in ours):.0f} | {med(r['cpu'] for r in ours):.1f} | "
        f"{med(speed):.1f}x ({speed[0]:.1f}-{speed[-1]:.1f}) | "
        f"1/{1 / med(memory):.1f} ({memory[0]:.3f}-{memory[-1]:.3f}) |",
        f"| {name} | target | | | | >= {target_speed:g}x {'met' if fast else 'NOT met'} | "
        f"<= 1/{1 / target_memory:g} {'met' if small else 'NOT met'} |",
    ]


def stages(case: dict, out: Path, floor: dict) -> list[str]:
    """One more ``roidask run``: the stages it records, and the whole process."""
    shutil.rmtree(out, ignore_errors=True)
    whole = measure(roidask_cmd(case, out))
    timings = json.loads((out / "provenance.json").read_text())["timings_s"]
    shutil.rmtree(out, ignore_errors=True)
    t = timings
    accounted = t["statistics"] + t["rois"] + t["extraction"]
    return [
        f"| {case['name']} | {floor['wall']:.2f} ({floor['cpu']:.1f} CPU) | {t['statistics']:.2f}"
        f" | {t['pass_statistics_cpu']:.1f} | {t['pass_temporary_writes_cpu']:.1f}"
        f" | {t['rois']:.2f} | {t['extraction']:.2f}"
        f" | {whole['wall'] - accounted:.2f} | {whole['wall']:.2f} ({whole['cpu']:.1f} CPU) |"
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", nargs="+", default=["int16"], choices=sorted(DTYPES))
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["whole-brain", "seed-vt", "seed-half"],
        choices=["whole-brain", "seed-vt", "seed-half"],
    )
    parser.add_argument("--small", action="store_true", help="small grids, 300 volumes")
    parser.add_argument("--no-stages", action="store_true", help="skip the table of stages")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    use_compiled_bytecode()
    small = SMALL if args.small else {}
    prefix = "small-" if args.small else ""

    cases = []
    if "whole-brain" in args.cases:
        for dtype in args.dtype:
            root = subject(
                f"{prefix}wholebrain-{dtype}", **{**WHOLE_BRAIN, **DTYPES[dtype], **small}
            )
            cases.append(
                {
                    "name": f"whole-brain {dtype}",
                    "files": (root / "bold.nii.gz", root / "labels.txt", root / "mask_vt.nii.gz"),
                    "targets": (10.0, 1 / 20),
                }
            )
    if {"seed-vt", "seed-half"} & set(args.cases):
        seed_small = {"n_volumes": SMALL["n_volumes"]} if args.small else {}
        root = subject(f"{prefix}sub-01" if args.small else "sub-01", **seed_small)
        bold, labels = root / "bold.nii.gz", root / "labels.txt"
        if "seed-vt" in args.cases:
            cases.append(
                {
                    "name": "seed-shaped, VT mask",
                    "files": (bold, labels, root / "mask_vt.nii.gz"),
                    "targets": (10.0, 1 / 8),
                }
            )
        if "seed-half" in args.cases:
            cases.append(
                {
                    "name": "seed-shaped, half-volume box",
                    "files": (bold, labels, half_volume_mask(root)),
                    "targets": (10.0, 1 / 8),
                }
            )

    print(
        f"machine: {platform.node()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.rounds} round(s)"
    )
    for case in cases:
        bold = case["files"][0]
        fraction, mb = box_fraction(bold, case["files"][2])
        case["box"] = f"box {fraction:.0%} of the volume, {mb:.0f} MB"
        print(
            f"{case['name']}: {bold} ({bold.stat().st_size / 1e6:.0f} MB .nii.gz), {case['box']}"
        )
    print()

    out = DATA / "out-wholebrain"
    results = {c["name"]: [] for c in cases}
    for k in range(args.rounds):
        for case in cases:
            shutil.rmtree(out, ignore_errors=True)
            try:
                measured = {"nilearn": measure(nilearn_cmd(case))}
            except RuntimeError as exc:  # killed by the kernel for lack of memory
                if "(exit -9)" not in str(exc):
                    raise
                measured = {"nilearn": None}
            measured["roidask"] = measure(roidask_cmd(case, out))
            shutil.rmtree(out, ignore_errors=True)
            results[case["name"]].append(measured)
            n, o = measured["nilearn"], measured["roidask"]
            ours = f"roidask {o['wall']:.2f} s {o['rss']:.0f} MB {o['cpu']:.1f} s CPU"
            if n is None:
                print(f"round {k + 1} {case['name']}: nilearn killed (out of memory) | {ours}")
                continue
            print(
                f"round {k + 1} {case['name']}: nilearn {n['wall']:.1f} s {n['rss']:.0f} MB "
                f"{n['cpu']:.0f} s CPU | {ours} | {n['wall'] / o['wall']:.1f}x, memory 1/"
                f"{n['rss'] / o['rss']:.1f}",
                flush=True,
            )
    print(
        "\n| subject | what | wall s | peak RSS MB | CPU s | faster than nilearn (rounds) |"
        " memory vs nilearn (rounds) |"
    )
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        print("\n".join(summary(case["name"], results[case["name"]], *case["targets"])))

    if not args.no_stages:
        print(
            "\n| subject | decode .nii.gz alone (isal) | pass (wall) | statistics CPU |"
            " temporary writes CPU | ROIs | extraction | start-up, checks, outputs |"
            " roidask run |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        floors = {}
        for case in cases:
            bold = case["files"][0]
            if bold not in floors:
                wall, cpu, _ = measure(decode_cmd(bold))["stdout"].split()
                floors[bold] = {"wall": float(wall), "cpu": float(cpu)}
            print("\n".join(stages(case, out, floors[bold])), flush=True)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
