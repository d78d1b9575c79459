"""Many subjects: ``roidask batch`` vs a loop of ``roidask run`` vs nilearn, side by side.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_batch.py [--rounds 1] [--sections ...]

Sections (all by default):

* ``loop``: a batch of N seed-shaped subjects (``--subjects``, default 4 and 8;
  ``make_synthetic_dataset``, 40x64x64x1452 int16, generated once into
  ``benchmarks/data/batch/``) with ``roidask batch`` on its default embedded
  cluster, vs a shell loop of ``roidask run`` over the same subjects, vs nilearn's
  example (``benchmarks/seed_nilearn.py``) run by ``xargs -P`` with as many
  processes as cores. Whole processes: wall time and the peak RSS of the process
  tree (sampled every 20 ms). Runs are interleaved in rounds; each ratio is taken
  within its round. Targets: batch <= 0.8 x the loop; roidask >= 5x faster than
  nilearn at a fraction of its memory. ``--block`` adds ``--granularity block``.
* ``tiny``: ``--tiny`` subjects (default 1000), symbolic links to the bundled Haxby
  slice, through :func:`roidask.batch.run_batch` on the default embedded cluster
  in a child process that reports the per-subject overhead of the client and the
  scheduler: the subjects' wall time beyond the workers' own time per subject
  (``(T - sum(task wall) / threads) / N``) and the CPU time of the client process
  (which holds the scheduler) per subject; target < 50 ms. Also the client's and
  the workers' RSS after 10 %, 50 % and 100 % of the subjects (flat).
* ``rerun``: ``--rerun`` tiny subjects (default 300) through ``run_batch``, then
  again with the same parameters (every subject skipped), then with another
  threshold (every subject's study node hidden, then rewritten): the wall time of
  each, the time of the checks of every subject's inputs before anything is written,
  and how often (and how long) the study's root ``zarr.json`` was rewritten.
* ``table``: ``roidask batch`` of 1, 2, 4, 8 of the generated subjects: wall,
  wall per subject and the largest worker RSS (the largest child process).

``--shape`` and ``--volumes`` generate smaller subjects (into another folder), to
check the script quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
VENV_BIN = Path(sys.executable).parent
ROIDASK = str(VENV_BIN / "roidask")
MIB = 2**20

sys.path.insert(0, str(HERE))
from _bytecode import use_compiled_bytecode  # noqa: E402  (sibling scripts)
from bench_pipeline import measure  # noqa: E402


def dataset(n: int, shape: tuple[int, int, int], volumes: int) -> list[dict]:
    """The first ``n`` subjects of the benchmark dataset (generated once, then kept)."""
    from roidask.datasets import make_synthetic_subject

    name = (
        "batch"
        if (shape, volumes) == ((40, 64, 64), 1452)
        else "batch-{}x{}x{}x{}".format(*shape, volumes)
    )
    root = DATA / name
    subjects = []
    for i in range(1, n + 1):
        d = root / f"sub-{i:02d}"
        if not (d / "truth.json").exists():  # as make_synthetic_dataset(seed=0) makes it
            print(f"generating {d} ...", file=sys.stderr)
            make_synthetic_subject(d, shape=shape, n_volumes=volumes, seed=i - 1, overwrite=True)
        files = {"bold": "bold.nii.gz", "labels": "labels.txt", "mask": "mask_vt.nii.gz"}
        subjects.append({"id": f"{i:02d}", **{k: d / v for k, v in files.items()}})
    return subjects


def manifest(subjects: list[dict], path: Path) -> Path:
    lines = ["subject\tbold\tlabels\tmask"]
    lines += [f"{s['id']}\t{s['bold']}\t{s['labels']}\t{s['mask']}" for s in subjects]
    path.write_text("\n".join(lines) + "\n")
    return path


def batch_cmd(manifest_path: Path, out: Path, *extra: str) -> list[str]:
    return [ROIDASK, "batch", str(manifest_path), "--out", str(out), "--no-plots", "--quiet",
            *extra]  # fmt: skip


def loop_cmd(subjects: list[dict], out: Path) -> list[str]:
    """A shell loop of ``roidask run``, one subject after another."""
    runs = [
        shlex.join([ROIDASK, "run", str(s["bold"]), "--labels", str(s["labels"]), "--mask",
                    str(s["mask"]), "--out", str(out / f"sub-{s['id']}"), "--no-plots",
                    "--quiet"]) + " >/dev/null"
        for s in subjects
    ]  # fmt: skip
    return ["sh", "-ec", f"mkdir -p {shlex.quote(str(out))}; " + "; ".join(runs)]


def nilearn_cmd(subjects: list[dict], listing: Path) -> list[str]:
    """nilearn's example on every subject, as many processes at a time as cores."""
    listing.write_text("".join(f"{s['bold']} {s['labels']} {s['mask']}\n" for s in subjects))
    script = HERE / "seed_nilearn.py"
    return ["xargs", "-a", str(listing), "-P", str(os.cpu_count() or 1), "-L", "1",
            sys.executable, str(script)]  # fmt: skip


# --------------------------------------------------------------------------- loop


def section_loop(args, work: Path) -> None:
    everyone = dataset(max(args.subjects), args.shape, args.volumes)
    cases = {}
    for n in args.subjects:
        subjects = everyone[:n]
        m = manifest(subjects, work / f"manifest-{n}.tsv")
        cases[n] = {
            "roidask batch": batch_cmd(m, work / "out"),
            "loop of roidask run": loop_cmd(subjects, work / "out"),
            f"nilearn example, xargs -P {os.cpu_count()}": nilearn_cmd(
                subjects, work / f"list-{n}.txt"
            ),
        }
        if args.block:
            cases[n]["roidask batch --granularity block"] = batch_cmd(
                m, work / "out", "--granularity", "block"
            )
    rounds = []
    for r in range(args.rounds):
        measured = {}
        for n, commands in cases.items():
            for name, cmd in commands.items():
                shutil.rmtree(work / "out", ignore_errors=True)
                measured[(n, name)] = measure(cmd)
                print(f"round {r + 1}: {n} subjects, {name}: {measured[(n, name)][0]:.1f} s",
                      file=sys.stderr)  # fmt: skip
        rounds.append(measured)
    shutil.rmtree(work / "out", ignore_errors=True)

    print("\n| subjects | what | wall s | s per subject | peak RSS MB (process tree) "
          "| batch / loop | nilearn / roidask batch | RSS nilearn / batch |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for n, commands in cases.items():
        names = list(commands)
        batch, loop, nilearn = names[0], names[1], names[2]
        for name in names:
            wall = statistics.median(r[(n, name)][0] for r in rounds)
            rss = statistics.median(r[(n, name)][1] for r in rounds)
            cells = ["", "", ""]
            if name == batch:
                cells[0] = ratio(rounds, (n, batch), (n, loop))
                cells[1] = ratio(rounds, (n, nilearn), (n, batch))
                cells[2] = ratio(rounds, (n, nilearn), (n, batch), field=1)
            print(f"| {n} | {name} | {wall:.1f} | {wall / n:.2f} | {rss:.0f} | "
                  + " | ".join(cells) + " |")  # fmt: skip


def ratio(rounds, num, den, field: int = 0) -> str:
    """Median (and range) over rounds of ``num / den``, each taken within its round."""
    values = sorted(r[num][field] / r[den][field] for r in rounds)
    text = f"{statistics.median(values):.2f}"
    return text if len(values) == 1 else f"{text} ({values[0]:.2f}-{values[-1]:.2f})"


# --------------------------------------------------------------------------- tiny


def tiny_specs(n: int, root: Path) -> list:
    """``n`` subjects made of symbolic links to the bundled Haxby slice."""
    from roidask.batch import SubjectSpec
    from roidask.datasets import haxby_slice

    haxby = haxby_slice()
    specs = []
    for i in range(n):
        d = root / "data" / f"s{i:04d}"
        d.mkdir(parents=True)
        links = [d / "bold.nii.gz", d / "labels.txt", d / "mask.nii.gz"]
        for link, src in zip(links, (haxby.bold, haxby.labels, haxby.mask), strict=True):
            link.symlink_to(src)
        specs.append(SubjectSpec(d.name, (links[0],), (links[1],), links[2]))
    return specs


def tiny_driver(n: int, root: Path) -> None:
    """Child process: ``n`` tiny subjects through run_batch; prints one JSON line."""
    from roidask.batch import run_batch
    from roidask.cluster import get_client

    specs = tiny_specs(n, root)
    me = psutil.Process()
    marks = {round(n * f) for f in (0.1, 0.5, 1.0)}
    warm = max(1, n // 10)  # subjects of the warm-up (workers import roidask meanwhile)
    samples, finished, times, walls = {}, [0], {}, []

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def log(line: str) -> None:
        if line.startswith("batch:"):
            times["start"], times["cpu_start"] = time.perf_counter(), cpu()
            return
        if line.startswith("group level"):
            return
        finished[0] += 1
        if finished[0] == warm:
            times["warm"], times["cpu_warm"] = time.perf_counter(), cpu()
        elif finished[0] > warm:  # "sub: done in 0.41 s [...]"
            walls.append(float(line.split(" in ", 1)[1].split(" s", 1)[0]))
        if finished[0] == n:
            times["last"], times["cpu_last"] = time.perf_counter(), cpu()
        if finished[0] in marks:
            workers = [c.memory_info().rss for c in me.children(recursive=True)]
            samples[finished[0]] = {"client": me.memory_info().rss / MIB,
                                    "worker": max(workers, default=0) / MIB}  # fmt: skip

    t0 = time.perf_counter()
    with get_client() as client:
        started = time.perf_counter()
        threads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        table = run_batch(specs, root / "out", plots=False, log=log)
        done = time.perf_counter()
    subjects_s = times["last"] - times["start"]
    task_s = table["wall_s"].astype(float).sum()
    print(json.dumps({
        "n": n, "threads": threads, "status": table["status"].value_counts().to_dict(),
        "cluster_start_s": started - t0, "run_batch_s": done - started,
        "subjects_s": subjects_s, "group_s": done - times["last"], "task_s": task_s,
        "overhead_ms": (subjects_s - task_s / threads) / n * 1000,
        "client_cpu_ms": (times["cpu_last"] - times["cpu_start"]) / n * 1000,
        "steady_overhead_ms": (times["last"] - times["warm"] - sum(walls) / threads)
        / (n - warm) * 1000,
        "steady_client_cpu_ms": (times["cpu_last"] - times["cpu_warm"]) / (n - warm) * 1000,
        "warm": warm,
        "rss_mb": samples,
    }))  # fmt: skip


def run_driver(name: str, n: int, root: Path) -> list[dict]:
    """Run ``--<name>-driver`` (a child process, in ``root``); its JSON lines."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    proc = subprocess.run(
        [sys.executable, __file__, f"--{name}-driver", str(n), str(root)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} driver failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.strip().splitlines()]


def section_tiny(args, work: Path) -> None:
    r = run_driver("tiny", args.tiny, work / "tiny")[-1]
    print(f"\n{r['n']} tiny subjects (Haxby slice), embedded cluster of {r['threads']} worker "
          f"threads: {r['status']}")  # fmt: skip
    print("\n| what | value |\n|---|---|")
    print(f"| cluster start | {r['cluster_start_s']:.1f} s |")
    print(f"| run_batch (subjects + group level) | {r['run_batch_s']:.1f} s |")
    print(f"| subjects: first to last | {r['subjects_s']:.1f} s |")
    print(f"| workers' own time (sum of task wall / threads) | "
          f"{r['task_s'] / r['threads']:.1f} s |")  # fmt: skip
    print(f"| per-subject overhead (wall beyond the workers' time), all subjects | "
          f"{r['overhead_ms']:.1f} ms |")  # fmt: skip
    print(f"| the same after the first {r['warm']} (workers warmed up) | "
          f"{r['steady_overhead_ms']:.1f} ms |")  # fmt: skip
    print(f"| client + scheduler CPU per subject, all subjects | {r['client_cpu_ms']:.1f} ms |")
    print(f"| the same after the first {r['warm']} | {r['steady_client_cpu_ms']:.1f} ms |")
    print(f"| group level | {r['group_s']:.1f} s |")
    for k, v in sorted(r["rss_mb"].items(), key=lambda kv: int(kv[0])):
        print(f"| RSS after {k} subjects: client, largest worker | {v['client']:.0f} MB, "
              f"{v['worker']:.0f} MB |")  # fmt: skip


# --------------------------------------------------------------------------- rerun


def rerun_driver(n: int, root: Path) -> None:
    """Child process: ``n`` tiny subjects, run, rerun, rerun with another threshold;
    prints one JSON line per run (wall, root rewrites, their time, those hiding nodes)."""
    import roidask.batch.schedule as schedule_module
    import roidask.outputs.study as study_module
    from roidask.batch import run_batch
    from roidask.cluster import get_client
    from roidask.pipeline import PipelineParams

    specs = tiny_specs(n, root)
    counts = {"rewrites": 0, "rewrite_s": 0.0, "hiding": 0, "checks_s": 0.0}
    real = study_module._rewrite_root
    real_checks = schedule_module.check_subjects

    def check_subjects(*a, **k):  # timed: every subject's inputs, before anything is written
        start = time.perf_counter()
        try:
            return real_checks(*a, **k)
        finally:
            counts["checks_s"] += time.perf_counter() - start

    def rewrite_root(path, attributes, listed, pending=None):  # counted
        start = time.perf_counter()
        try:
            return real(path, attributes, listed, pending)
        finally:
            counts["rewrites"] += 1
            counts["rewrite_s"] += time.perf_counter() - start
            counts["hiding"] += not pending

    study_module._rewrite_root = rewrite_root
    schedule_module.check_subjects = check_subjects
    runs = [("first run", PipelineParams()), ("same parameters", PipelineParams()),
            ("another threshold", PipelineParams(threshold=4.0))]  # fmt: skip
    with get_client():
        for what, params in runs:
            counts.update(rewrites=0, rewrite_s=0.0, hiding=0, checks_s=0.0)
            start = time.perf_counter()
            table = run_batch(specs, root / "out", plots=False, params=params)
            wall_s = time.perf_counter() - start
            statuses = table["status"].value_counts().to_dict()
            print(json.dumps({"run": what, "wall_s": wall_s, **counts, "status": statuses}))
            sys.stdout.flush()


def section_rerun(args, work: Path) -> None:
    runs = run_driver("rerun", args.rerun, work / "rerun")
    print(f"\n{args.rerun} tiny subjects (Haxby slice), run three times on the embedded cluster")
    print("\n| run | wall s | statuses | input checks s | root rewrites | of which only hiding "
          "| rewriting s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['run']} | {r['wall_s']:.1f} | {r['status']} | {r['checks_s']:.1f} | "
              f"{r['rewrites']} | {r['hiding']} | {r['rewrite_s']:.1f} |")  # fmt: skip


# --------------------------------------------------------------------------- table


def section_table(args, work: Path) -> None:
    everyone = dataset(8, args.shape, args.volumes)
    print("\n| subjects | wall s | s per subject | largest worker RSS MB | process tree peak MB |")
    print("|---|---|---|---|---|")
    for n in (1, 2, 4, 8):
        m = manifest(everyone[:n], work / f"manifest-{n}.tsv")
        runs = []
        for _ in range(args.rounds):
            shutil.rmtree(work / "out", ignore_errors=True)
            runs.append(measure(batch_cmd(m, work / "out")))
        wall, tree, worker = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"| {n} | {wall:.1f} | {wall / n:.2f} | {worker:.0f} | {tree:.0f} |")
    shutil.rmtree(work / "out", ignore_errors=True)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] in ("--tiny-driver", "--rerun-driver"):
        driver = tiny_driver if sys.argv[1] == "--tiny-driver" else rerun_driver
        driver(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sections", nargs="+", default=["loop", "tiny", "table"],
                        choices=["loop", "tiny", "rerun", "table"])  # fmt: skip
    parser.add_argument("--subjects", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--tiny", type=int, default=1000)
    parser.add_argument("--rerun", type=int, default=300)
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 64, 64])
    parser.add_argument("--volumes", type=int, default=1452)
    parser.add_argument("--block", action="store_true", help="also --granularity block")
    args = parser.parse_args()
    args.shape = tuple(args.shape)
    DATA.mkdir(exist_ok=True)
    use_compiled_bytecode()
    print(f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB,"
          f" load average {os.getloadavg()[0]:.1f}; subjects {args.shape[0]}x{args.shape[1]}x"
          f"{args.shape[2]}x{args.volumes} int16; rounds {args.rounds}")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=DATA, prefix="bench-batch-") as tmp:
        work = Path(tmp)
        if "loop" in args.sections:
            section_loop(args, work)
        if "tiny" in args.sections:
            section_tiny(args, work)
        if "rerun" in args.sections:
            section_rerun(args, work)
        if "table" in args.sections:
            section_table(args, work)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
