"""Whole-process wall time and peak memory: nilearn's example vs roidask, side by side.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_pipeline.py [--repeats 3] [--sections ...]

It generates a seed-shaped synthetic subject (40x64x64x1452 int16, the real Haxby
condition sequence) with roidask's generator into ``benchmarks/data/`` (kept for
later runs), then measures, each figure the median of ``--repeats`` runs of a
whole process (peak RSS of the process tree, sampled every 20 ms):

* ``pipeline``: the example with nilearn + scipy (``benchmarks/seed_nilearn.py``, the
  same files) vs ``roidask run`` from the NIfTI files vs ``roidask run`` from an
  already converted store (both ``--no-plots``; the nilearn script does not plot);
* ``convert``: ``roidask convert`` alone (time, peak RSS, store size vs .nii.gz);
* ``threads``: ``roidask run`` from the store with 1 vs 2 threads;
* ``pipeline`` also times ``roidask run`` from NIfTI on an embedded LocalCluster
  (``--scheduler local``) instead of the default in-process threads;
* ``checksums``: the cost of the CRC-32C checksum every store chunk carries: the
  subject converted with roidask's codecs and with the same codecs minus ``crc32c``
  (a variant written here only, by patching ``roidask.io.store_write`` in the
  converting process), then ``roidask run --store`` on each and a read of every
  chunk of each in this process, in rounds whose order of the two alternates; also
  ``roidask info --verify`` (reads and checks every chunk) on the checksummed one.

Many subjects (``roidask batch``): ``benchmarks/bench_batch.py``.

The runs of nilearn and of every roidask case are interleaved in rounds (nilearn,
then each case, ``--repeats`` times); each speed ratio is taken within a round and
the table gives their median and range, since the shared machine's speed drifts
by tens of percent over minutes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from _bytecode import use_compiled_bytecode

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
VENV_BIN = Path(sys.executable).parent


def measure(cmd: list[str], *, cwd: Path | None = None) -> tuple[float, float, float]:
    """Run ``cmd``; return (wall s, peak RSS of the process tree MB, max worker RSS MB)."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        root = psutil.Process(proc.pid)
        peak_tree = peak_child = 0
        while proc.poll() is None:
            try:
                rss = []
                for p in [root, *root.children(recursive=True)]:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.NoSuchProcess:
                        rss.append(0)
                peak_tree = max(peak_tree, sum(rss))
                peak_child = max(peak_child, max(rss[1:], default=0))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.02)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return wall, peak_tree / 2**20, peak_child / 2**20


def median_of(cmd, repeats, before=None):
    runs = []
    for _ in range(repeats):
        if before:
            before()
        runs.append(measure(cmd))
    return tuple(statistics.median(r[i] for r in runs) for i in range(3))


# Converts like ``roidask convert``; with "off", without the crc32c codec (benchmark only).
CONVERT = """
import sys
from roidask.io import store_write
if sys.argv[1] == "off":
    from zarr.codecs import BloscCodec, ZstdCodec
    store_write.bold_codecs = lambda: [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]
    store_write.checksummed = lambda: [ZstdCodec(level=0)]
store_write.convert(sys.argv[2], labels=sys.argv[3], out=sys.argv[4])
"""


def store_codecs(store: Path) -> list[str]:
    """Codec names of a store's bold array (to check which variant it is)."""
    import json

    meta = json.loads((store / "sub-01" / "bold" / "zarr.json").read_text())
    return [c["name"] for c in meta["codecs"]]


def measure_cpu(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, peak RSS MB, CPU s) of ``cmd``: CPU time (user + system, the process and
    its children) varies far less than wall time on a shared machine."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, rss, _ = measure(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, rss, cpu


def read_all(store: Path) -> tuple[float, float, float]:
    """(wall s, 0, CPU s) to read every chunk of a store's bold through roidask's reader,
    in this process."""
    import dask

    from roidask.io import open_subject

    bold = open_subject(store)["bold"]
    start, cpu = time.perf_counter(), time.process_time()
    with dask.config.set(scheduler="threads"):
        bold.data.sum().compute()
    return time.perf_counter() - start, 0.0, time.process_time() - cpu


def crc_alone(store: Path) -> float:
    """Seconds spent computing the CRC-32C of every bold chunk file (the read excluded)."""
    import google_crc32c

    total = 0.0
    for chunk in (store / "sub-01" / "bold" / "c").rglob("*"):
        if chunk.is_file():
            data = chunk.read_bytes()
            start = time.perf_counter()
            google_crc32c.value(data[:-4])
            total += time.perf_counter() - start
    return total


def checksum_rounds(bold, labels, mask, out, repeats, roidask):
    """Per round: convert with / without crc32c, then ``run --store`` on each, then read every
    chunk of each in this process; the order of the two variants alternates between rounds."""
    stores = {"on": DATA / "checksums-on.zarr", "off": DATA / "checksums-off.zarr"}
    rounds = []
    for i in range(repeats):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        measured = {}
        for variant in order:
            shutil.rmtree(stores[variant], ignore_errors=True)
            cmd = [sys.executable, "-c", CONVERT, variant, str(bold), str(labels)]
            measured["convert", variant] = measure_cpu([*cmd, str(stores[variant])])
        assert "crc32c" in store_codecs(stores["on"])
        assert "crc32c" not in store_codecs(stores["off"])
        for variant in order:
            shutil.rmtree(out, ignore_errors=True)
            cmd = [roidask, "run", "--store", str(stores[variant]), "--mask", str(mask)]
            measured["run", variant] = measure_cpu(
                [*cmd, "--out", str(out), "--no-plots", "--quiet"]
            )
        read_all(stores[order[0]])  # warm-up: imports, thread pool, page cache
        for variant in order:
            measured["read", variant] = read_all(stores[variant])
        measured["crc", "on"] = (crc_alone(stores["on"]), 0.0, 0.0)
        measured["verify", "on"] = measure_cpu([roidask, "info", "--verify", str(stores["on"])])
        rounds.append(measured)
    sizes = {
        v: sum(f.stat().st_size for f in s.rglob("*") if f.is_file()) for v, s in stores.items()
    }
    n_chunks = sum(1 for f in (stores["on"] / "sub-01" / "bold" / "c").rglob("*") if f.is_file())
    for store in stores.values():
        shutil.rmtree(store, ignore_errors=True)
    return rounds, sizes, n_chunks


def print_checksums(rounds, sizes, n_chunks) -> None:
    def med(key, i=0):
        return statistics.median(r[key][i] for r in rounds)

    print("\n| what | with crc32c | without | cost (median of per-round ratios, range) |")
    print("|---|---|---|---|")
    for step, label in (
        ("convert", "roidask convert"),
        ("run", "roidask run --store"),
        ("read", "reading every bold chunk (in process)"),
    ):
        for i, unit in ((0, "wall s"), (2, "CPU s")):
            ratios = sorted(r[step, "on"][i] / r[step, "off"][i] for r in rounds)
            cost = f"{(statistics.median(ratios) - 1) * 100:+.1f} % "
            cost += f"({(ratios[0] - 1) * 100:+.1f} to {(ratios[-1] - 1) * 100:+.1f} %)"
            on, off = med((step, "on"), i), med((step, "off"), i)
            print(f"| {label}, {unit} | {on:.2f} | {off:.2f} | {cost} |")
    for step, label in (("convert", "roidask convert"), ("run", "roidask run --store")):
        on, off = med((step, "on"), 1), med((step, "off"), 1)
        print(f"| {label}, peak RSS MB | {on:.0f} | {off:.0f} | {on - off:+.0f} MB |")
    on, off = sizes["on"] / 2**20, sizes["off"] / 2**20
    print(
        f"| store size MB ({n_chunks} bold chunks) | {on:.2f} | {off:.2f} | "
        f"{sizes['on'] - sizes['off']:+d} bytes |"
    )
    print(
        f"| computing the CRC-32C of every bold chunk alone (google-crc32c), s | "
        f"{med(('crc', 'on')):.3f} | | |"
    )
    print(
        "| roidask info --verify (every chunk read and checked), wall / CPU s | "
        f"{med(('verify', 'on')):.2f} / {med(('verify', 'on'), 2):.2f} | | |"
    )


def subject():
    from roidask.datasets import make_synthetic_subject

    root = DATA / "sub-01"
    if not (root / "truth.json").exists():
        print("generating a 40x64x64x1452 synthetic subject ...", file=sys.stderr)
        make_synthetic_subject(root, seed=0, overwrite=True)
    return root


def row(name, rounds, key, ref_rss):
    """Table row: median wall and RSS of ``key`` over rounds, ratios to nilearn per round."""
    wall = statistics.median(r[key][0] for r in rounds)
    rss = statistics.median(r[key][1] for r in rounds)
    if key == "nilearn":
        return f"| {name:<42} | {wall:8.2f} | {rss:9.0f} | | |"
    ratios = sorted(r["nilearn"][0] / r[key][0] for r in rounds)
    speed = f"{statistics.median(ratios):5.2f}x (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
    return f"| {name:<42} | {wall:8.2f} | {rss:9.0f} | {speed} | {rss / ref_rss:5.2f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["pipeline", "convert", "threads"],
        choices=["pipeline", "convert", "threads", "checksums"],
    )
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    use_compiled_bytecode()
    subj = subject()
    bold, labels, mask = subj / "bold.nii.gz", subj / "labels.txt", subj / "mask_vt.nii.gz"
    roidask = str(VENV_BIN / "roidask")
    store = DATA / "sub-01.zarr"
    out = DATA / "out"

    def convert_cmd(target):
        return [roidask, "convert", str(bold), "--labels", str(labels), "--out", str(target)]

    if store.exists() and "crc32c" not in store_codecs(store):  # an older format's
        shutil.rmtree(store)
    if not store.exists() and ({"pipeline", "threads"} & set(args.sections)):
        subprocess.run(
            [*convert_cmd(store), "--quiet"],
            check=True,
        )

    def clean():
        shutil.rmtree(out, ignore_errors=True)

    print(f"subject: {bold} ({bold.stat().st_size / 2**20:.0f} MB gz, 40x64x64x1452 int16)")
    print(
        f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB;"
        f" median of {args.repeats} runs; peak RSS of the whole process tree\n"
    )
    from_nifti = [str(bold), "--labels", str(labels)]
    from_store = ["--store", str(store)]

    def run_cmd(source, *extra):
        """``roidask run`` on ``source``, no figures (nilearn's script does not plot)."""
        cmd = [roidask, "run", *source, "--mask", str(mask), "--out", str(out)]
        return [*cmd, "--no-plots", "--quiet", *extra]

    cases = []
    if "pipeline" in args.sections:
        cases += [
            ("roidask run (NIfTI)", run_cmd(from_nifti)),
            ("roidask run (converted store)", run_cmd(from_store)),
            (
                "roidask run (NIfTI), embedded LocalCluster",
                run_cmd(from_nifti, "--scheduler", "local"),
            ),
        ]
    if "threads" in args.sections:
        cases += [
            (
                f"roidask run (store), {n} thread(s)",
                run_cmd(from_store, "--threads-per-worker", f"{n}"),
            )
            for n in (1, 2)
        ]
    if cases:
        # Rounds: nilearn, then every roidask case, repeated; each ratio is taken
        # within a round, so a machine that drifts between rounds affects both sides.
        nilearn_cmd = [sys.executable, str(HERE / "seed_nilearn.py"), str(bold), str(labels)]
        nilearn_cmd.append(str(mask))
        rounds = []
        for _ in range(args.repeats):
            measured = {"nilearn": measure(nilearn_cmd)}
            for name, cmd in cases:
                clean()
                measured[name] = measure(cmd)
            rounds.append(measured)
        print("| what | wall s | peak RSS MB | faster than nilearn (per round) | RSS vs nilearn |")
        print("|---|---|---|---|---|")
        ref_rss = statistics.median(r["nilearn"][1] for r in rounds)
        print(row("nilearn + scipy example (NIfTI)", rounds, "nilearn", ref_rss))
        for name, _ in cases:
            print(row(name, rounds, name, ref_rss))
    if "convert" in args.sections:
        tmp_store = DATA / "convert-bench.zarr"

        def clean_store():
            shutil.rmtree(tmp_store, ignore_errors=True)

        w = median_of([*convert_cmd(tmp_store), "--quiet"], args.repeats, clean_store)
        size = sum(f.stat().st_size for f in tmp_store.rglob("*") if f.is_file())
        print("\n| what | wall s | peak RSS MB |\n|---|---|---|")
        print(f"| roidask convert (NIfTI -> store) | {w[0]:.2f} | {w[1]:.0f} |")
        print(
            f"\nstore size {size / 2**20:.0f} MB vs .nii.gz {bold.stat().st_size / 2**20:.0f}"
            f" MB vs raw {40 * 64 * 64 * 1452 * 2 / 2**20:.0f} MB"
        )
        clean_store()
    if "checksums" in args.sections:
        print_checksums(*checksum_rounds(bold, labels, mask, out, args.repeats, roidask))
    clean()
    return 0


if __name__ == "__main__":
    sys.exit(main())
