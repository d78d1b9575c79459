"""Run ``roidask batch`` on a SLURM or PBS cluster, with dask workers as batch jobs.

Run it on a login node (or in a small job of its own): it starts a dask
scheduler here, submits ``--jobs`` worker jobs through dask-jobqueue, runs
``roidask batch MANIFEST --out DIR --scheduler <this scheduler>`` and cancels
the jobs at the end. Needs the ``roidask[jobqueue]`` extra, in the Python that
runs this script.

The scheduler listens on this host's network, so it speaks TLS only: with a
CA certificate and a certificate/key made for this batch, written owner-only
(0700 directory, 0600 files) under ``--shared-temp-directory`` (default: the
home directory), which the worker jobs must see, and removed at the end. Other
users and anything else that reaches the port cannot join it or run code.

Every option is checked before any job is submitted or anything written: this
script's own, then the batch's (``roidask batch --check``). An error is one line,
``jobqueue_batch: error: ...``, exit status 2.

Examples
--------
Print the job script each worker job would run, submitting nothing::

    python cluster/jobqueue_batch.py --print-job-script --kind slurm \\
        --cores 8 --memory 32GiB --walltime 02:00:00 --queue normal

Run the batch on 4 jobs; the options of ``roidask batch`` (before or after
MANIFEST, or after ``--``) go to it::

    python cluster/jobqueue_batch.py --kind slurm --cores 8 --memory 32GiB \\
        --walltime 02:00:00 --jobs 4 --interface ib0 manifest.tsv --out results
"""

from __future__ import annotations

import _thread
import argparse
import importlib.util
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

try:  # one line, not a traceback, when this Python has no roidask (see main)
    import dask
    import psutil

    from roidask import cli
    from roidask import cluster as rcluster
    from roidask._launch import handle_stop_signals
    from roidask.exceptions import RoidaskError, Terminated
except ImportError as exc:
    NOT_IMPORTED: ImportError | None = exc
else:
    NOT_IMPORTED = None

__all__ = ["build_parser", "main"]

#: What this script's errors start with.
PREFIX = "jobqueue_batch: error:"


class UsageError(Exception):
    """An option of this script is wrong: its one-line message names the flag."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, ``jobqueue_batch: error: ... (see ... --help)``.

    A value that starts with ``-`` and a digit (``--threshold -1``) is a value, as
    ``roidask``'s parser reads it, not an unknown option.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str):
        message = re.sub(r"^argument ", "", " ".join(message.split()))
        self.exit(2, f"{PREFIX} {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class _PassOn(argparse.Action):
    """An option of ``roidask batch``, kept in order for it (wherever it was given)."""

    def __call__(self, parser, namespace, values, option_string=None):
        flag = self.option_strings[0]  # in full: argparse takes any unambiguous prefix
        if self.nargs == 0:
            given = [flag]
        elif isinstance(values, str):  # "--mask=-x.nii": a value that looks like an option
            given = [f"{flag}={values}"] if values.startswith("-") else [flag, values]
        else:
            given = [flag, *values]
        namespace.passthrough = [*namespace.passthrough, *given]


class _Refused(argparse.Action):
    """An option of ``roidask batch`` this script sets itself, or that means nothing here."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(2, f"{PREFIX} {self.option_strings[0]}: {NOT_USED}\n")


def _batch_options() -> list[argparse.Action]:
    """The options of ``roidask batch`` (its parser's, so always those of this roidask)."""
    commands = next(
        a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return [a for a in commands.choices["batch"]._actions if a.option_strings]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jobqueue_batch.py",
        description="Run `roidask batch` on dask workers submitted as SLURM or PBS jobs. "
        "The options of `roidask batch` (see roidask batch --help), before or after "
        "MANIFEST, are passed on to it, except those this script sets itself: "
        + ", ".join(f for f in NOT_PASSED if f != "--dashboard")
        + ".",
    )
    p.add_argument("manifest", nargs="?", help="the batch manifest (a TSV, see `roidask batch`)")
    p.add_argument("--out", help="output directory, passed to `roidask batch --out`")
    p.add_argument("--kind", choices=("slurm", "pbs"), default="slurm", help="batch system")
    p.add_argument("--cores", type=_positive_int, required=True, help="cores per job")
    p.add_argument("--memory", required=True, help="memory per job, e.g. 32GiB")
    p.add_argument(
        "--walltime",
        required=True,
        help="time limit per job: SLURM [D-]HH:MM:SS (e.g. 02:00:00, 1-00:00:00), "
        "PBS HH:MM:SS (e.g. 36:00:00)",
    )
    p.add_argument(
        "--jobs", type=_positive_int, default=1, help="number of worker jobs (default 1)"
    )
    p.add_argument("--queue", default=None, help="partition (SLURM) or queue (PBS)")
    p.add_argument("--account", default=None, help="account/project to charge")
    p.add_argument("--python", default=None, help="python on the compute nodes")
    p.add_argument(
        "--interface",
        default=None,
        help="network interface the compute nodes reach this host on, e.g. ib0 (one of "
        "this host's, with an IPv4 address: the scheduler listens on it)",
    )
    p.add_argument(
        "--job-name", default=None, help="name of the worker jobs (default: dask-worker)"
    )
    p.add_argument(
        "--processes",
        type=_positive_int,
        default=None,
        help="worker processes per job, at most --cores (default: dask-jobqueue's choice)",
    )
    p.add_argument(
        "--job-extra",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="extra #SBATCH/#PBS directive, e.g. --job-extra=--gres=gpu:0 (repeatable)",
    )
    p.add_argument(
        "--log-directory", default=None, help="directory for the jobs' stdout/stderr files"
    )
    p.add_argument(
        "--shared-temp-directory",
        default=None,
        metavar="DIR",
        help="directory the worker jobs see, for the batch's TLS credentials "
        "(default: dask-jobqueue's setting, else the home directory)",
    )
    p.add_argument("--dashboard", action="store_true", help="serve the dashboard on :8787")
    p.add_argument(
        "--print-job-script",
        action="store_true",
        help="print the job script each worker job runs, and exit (submits and writes nothing)",
    )
    p.set_defaults(passthrough=[])
    own = {s for a in p._actions for s in a.option_strings}
    for action in _batch_options():
        if own.intersection(action.option_strings):  # --out, --dashboard, -h: this script's
            continue
        p.add_argument(
            *action.option_strings,
            nargs=action.nargs,
            action=_Refused if action.option_strings[0] in NOT_PASSED else _PassOn,
            dest=argparse.SUPPRESS,
            metavar=action.metavar,
            help=argparse.SUPPRESS,
        )
    return p


def _split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


#: ``roidask batch`` options this script sets itself, or that have no meaning here (the
#: workers are the --jobs batch jobs); ``--dashboard`` is this script's own.
NOT_PASSED = ("--scheduler", "--n-workers", "--threads-per-worker", "--memory-limit",
              "--tls-ca-file", "--tls-cert", "--tls-key", "--dashboard", "--check")  # fmt: skip
NOT_USED = ("not used here (this script starts the scheduler and its workers are the --jobs "
            "batch jobs; see --cores, --memory, --processes)")  # fmt: skip
#: The flags of this script, by the parameter of roidask.cluster.jobqueue_cluster they set
#: (the library's messages name the parameter).
FLAG_OF = {"kind": "--kind", "cores": "--cores", "memory": "--memory", "walltime": "--walltime",
           "queue": "--queue", "account": "--account", "python": "--python",
           "job_extra_directives": "--job-extra", "interface": "--interface",
           "job_name": "--job-name", "processes": "--processes",
           "log_directory": "--log-directory",
           "shared_temp_directory": "--shared-temp-directory"}  # fmt: skip
#: A PBS walltime: hours (any number), minutes, seconds.
PBS_WALLTIME = re.compile(r"^\d+:[0-5]\d:[0-5]\d$")
#: Seconds between two looks at the worker jobs while the scheduler has no worker.
POLL_S = 10.0
#: Seconds between two "waiting for the worker jobs" lines.
WAITING_EVERY_S = 300.0
#: Job states in which a job may still give workers (squeue's %T; qstat's S column).
ALIVE = {
    "slurm": {"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
              "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"},
    "pbs": {"Q", "R", "H", "W", "T", "S", "B", "E"},
}  # fmt: skip


#: What squeue/qstat say of a job they no longer list (it ended): not a failed query.
GONE = {"slurm": ("Invalid job id",), "pbs": ("Unknown Job Id", "Job has finished")}


def job_states(kind: str, job_ids: list[str]) -> dict[str, str] | None:
    """Job id -> state (and SLURM's reason) of the jobs the batch system still lists, or
    ``None`` when it could not be asked (no answer, a timeout: nothing is known)."""
    if not job_ids:
        return {}
    if kind == "slurm":
        cmd = ["squeue", "-h", "-o", "%i %T %r", "--jobs", ",".join(job_ids)]
    else:
        cmd = ["qstat", *job_ids]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        if not errors or not all(any(g in e for g in GONE[kind]) for e in errors):
            return None  # e.g. "slurm_load_jobs error: Socket timed out"
    states = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        if kind == "slurm" and len(fields) >= 2 and fields[0] in job_ids:
            states[fields[0]] = " ".join(fields[1:])
        elif kind == "pbs" and len(fields) >= 5 and fields[0].split(".")[0] in job_ids:
            states[fields[0].split(".")[0]] = fields[4]
    return states


class JobWatch(threading.Thread):
    """Stops the batch when its scheduler has no worker and no worker job can give one.

    A worker job that reached its walltime, was cancelled or failed takes its
    workers with it; dask-jobqueue does not submit it again, and a batch without
    workers would wait forever. While the scheduler has no worker, the jobs' states
    are looked at every :data:`POLL_S` seconds: queued ones are reported every
    :data:`WAITING_EVERY_S` seconds; when none is queued or running any more, the
    batch is interrupted (the subjects completed are kept).
    """

    def __init__(self, cluster, kind: str):
        super().__init__(name="roidask-jobwatch", daemon=True)
        self.cluster, self.kind = cluster, kind
        self.done = threading.Event()
        self.fired = False
        self.lock = threading.Lock()  # the batch ends, or this thread interrupts it: not both

    def stop(self) -> None:
        """The batch ended: no interruption after this returns (one already sent is
        absorbed here)."""
        try:
            with self.lock:
                self.done.set()
        except KeyboardInterrupt:
            if not self.fired:
                raise

    def run(self) -> None:
        last_said = time.monotonic()
        while not self.done.wait(POLL_S):
            try:
                if self.cluster.scheduler_info.get("workers"):
                    last_said = time.monotonic()
                    continue
                jobs = list(self.cluster.workers.values())  # the event loop may change it
            except RuntimeError:
                continue
            ids = [j.job_id for j in jobs if j.job_id]
            states = job_states(self.kind, ids)
            if states is None:  # not known this time
                continue
            alive = {i: st for i, st in states.items() if st.split()[0] in ALIVE[self.kind]}
            if not alive:
                with self.lock:
                    if self.done.is_set():
                        return
                    self.fired = True
                    print(
                        f"jobqueue_batch: error: no worker left, and none of the worker jobs "
                        f"({', '.join(ids) or 'none submitted'}) is queued or running any "
                        "more (walltime reached, cancelled or failed: see their logs, "
                        "--log-directory); stopping the batch: run this command again to "
                        "finish it (the subjects completed are kept)",
                        file=sys.stderr,
                        flush=True,
                    )
                    _thread.interrupt_main()
                return
            if time.monotonic() - last_said >= WAITING_EVERY_S:
                last_said = time.monotonic()
                listed = ", ".join(f"{i} {st}" for i, st in sorted(alive.items()))
                print(f"jobqueue_batch: waiting for the worker jobs: {listed}", file=sys.stderr)


class SubmitError(Exception):
    """The batch system refused the worker jobs."""


class _SubmitFailure(logging.Filter):
    """Drops tornado's "Exception in callback" record of a failed job submission (the
    same error :func:`_submit` reports in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        text = str(error)
        return not (
            (isinstance(error, RuntimeError) and "Command exited with" in text)
            or (isinstance(error, FileNotFoundError) and ("sbatch" in text or "qsub" in text))
            or (isinstance(error, ValueError) and "job id" in text)
        )


def _submit(cluster, jobs: int, kind: str) -> None:
    """Submit the worker jobs and wait for the batch system's answer.

    Raises
    ------
    SubmitError
        The submission command failed: its message.
    """

    async def scale_and_wait():
        cluster.scale(jobs=jobs)  # schedules the submissions on the cluster's event loop
        await cluster._correct_state()  # they run now: their errors raised here

    quiet = _SubmitFailure()  # the loop's callback re-raises it as a logged traceback
    logging.getLogger("tornado.application").addFilter(quiet)
    try:
        cluster.sync(scale_and_wait)
    except (RuntimeError, OSError, ValueError) as exc:
        # RuntimeError: dask-jobqueue's, with the command, its exit code, stdout and stderr;
        # OSError: no such command (another --kind?); ValueError: an answer without job id
        # the jobs not submitted failed (closing the cluster expects no job left as
        # created); those submitted are cancelled
        from distributed.core import Status

        for job in cluster.workers.values():
            if not job.job_id:
                job.status = Status.failed
        cluster.scale(0)
        cluster.sync(cluster._correct_state)
        command = "sbatch" if kind == "slurm" else "qsub"
        if isinstance(exc, FileNotFoundError):
            raise SubmitError(
                f"{command} not found: run this on a {kind.upper()} login node (or give the "
                "--kind of this site's batch system)"
            ) from None
        text = str(exc)
        said = text.split("stderr:", 1)[1] if "stderr:" in text else text
        lines = [line.strip() for line in said.splitlines() if line.strip()]
        raise SubmitError(f"{command} refused the worker jobs: {'; '.join(lines)}") from None


def not_imported(exc: ImportError) -> str:
    """The error line for a Python without roidask (or without one of its dependencies)."""
    where = f"this Python ({sys.executable})"
    if importlib.util.find_spec("roidask") is None:
        what = f"roidask is not installed in {where}"
    else:
        what = f"roidask cannot be imported in {where}: {exc}"
    return (
        f"{what}; run this script with the Python roidask is installed in, or install it "
        "there: pip install 'roidask[jobqueue]'"
    )


def flag_message(exc: BaseException) -> str:
    """The library's one-line message, the parameter it starts with named as this script's
    flag (``memory: expected ...`` -> ``--memory: expected ...``)."""
    text = " ".join(str(exc).split())
    name = re.match(r"\w+(?=: )", text)
    if name and name.group(0) in FLAG_OF:
        text = FLAG_OF[name.group(0)] + text[name.end() :]
    return text


def check_interface(name: str) -> None:
    """``name`` is an interface of this host with an IPv4 address, where the scheduler can
    listen (else distributed fails with a long traceback once the batch's checks ran)."""
    interfaces = psutil.net_if_addrs()
    with_ipv4 = sorted(n for n, addrs in interfaces.items()
                       if any(a.family == socket.AF_INET for a in addrs))  # fmt: skip
    if name not in interfaces:
        raise UsageError(
            f"--interface: expected a network interface of this host, where the scheduler "
            f"listens ({', '.join(with_ipv4) or 'none with an IPv4 address'}), got {name!r}"
        )
    if name not in with_ipv4:
        raise UsageError(
            f"--interface: expected an interface with an IPv4 address, where the scheduler "
            f"listens ({', '.join(with_ipv4) or 'none here'}), got {name!r}, which has none"
        )


def check_options(args: argparse.Namespace, options: dict) -> None:
    """This script's options, before anything is run, submitted or written.

    Raises
    ------
    UsageError
        A wrong option, named by its flag.
    RoidaskError
        One of ``roidask.cluster``'s checks of the cluster's options (they name its
        parameters: see :func:`flag_message`).
    """
    if args.processes is not None and args.processes > args.cores:
        raise UsageError(
            f"--processes: expected at most --cores ({args.cores}) worker processes per job "
            f"(each has cores/processes threads), got {args.processes}"
        )
    if args.kind == "pbs" and not PBS_WALLTIME.match(args.walltime):
        raise UsageError(
            f"--walltime: expected a PBS time limit HH:MM:SS (the hours may exceed 24, e.g. "
            f"'36:00:00'), got {args.walltime!r}"
        )
    # the library's own checks of cores, memory and walltime, before those of the batch
    rcluster._jobqueue_kwargs(dashboard=args.dashboard, kwargs={}, **options)
    if args.interface is not None and not args.print_job_script:  # the scheduler runs here
        check_interface(args.interface)


def print_job_script(kind: str, options: dict) -> str:
    """:func:`roidask.cluster.job_script`, creating nothing: dask-jobqueue creates the log
    directory when it renders the script, so it renders it with an empty temporary one, then
    the one asked for is written in its place."""
    logs = options.get("log_directory") or dask.config.get(f"jobqueue.{kind}.log-directory", None)
    if not logs:
        return rcluster.job_script(kind, **options)
    with tempfile.TemporaryDirectory(prefix="jobqueue-batch-logs-") as tmp:
        text = rcluster.job_script(kind, **{**options, "log_directory": tmp})
    return text.replace(tmp, os.fspath(logs))


def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit status (that of ``roidask batch`` when it ran)."""
    if NOT_IMPORTED is not None:
        print(f"{PREFIX} {not_imported(NOT_IMPORTED)}", file=sys.stderr)
        return 2
    parser = build_parser()
    own, after_dashdash = _split_argv(list(sys.argv[1:] if argv is None else argv))
    args, unknown = parser.parse_known_args(own)
    if unknown:  # the first unknown option (its value may have been taken for MANIFEST)
        first = next((u for u in unknown if u.startswith("-")), None)
        if first is None:
            parser.error(f"{unknown[0]}: unexpected argument (MANIFEST is {args.manifest!r})")
        parser.error(f"{first.split('=', 1)[0]}: not an option of this script or of roidask batch")
    for arg in after_dashdash:  # given to the batch as they are: refused ones refused here
        given = arg.split("=", 1)[0]  # argparse takes any unambiguous prefix of a flag
        flag = next((f for f in NOT_PASSED if len(given) > 3 and f.startswith(given)), None)
        if flag is not None:
            parser.exit(2, f"{PREFIX} {flag}: {NOT_USED}\n")
    passthrough = [*args.passthrough, *after_dashdash]
    if not args.print_job_script and (args.manifest is None or args.out is None):
        parser.error("MANIFEST and --out are required (unless --print-job-script)")

    options = {
        "cores": args.cores,
        "memory": args.memory,
        "walltime": args.walltime,
        "queue": args.queue,
        "account": args.account,
        "python": args.python,
        "job_extra_directives": args.job_extra,
    }
    extra = {}  # where the workers run: checked by dask-jobqueue, or by check_options
    for name in ("interface", "processes", "log_directory", "shared_temp_directory", "job_name"):
        if getattr(args, name) is not None:
            extra[name] = getattr(args, name)
    try:
        check_options(args, options)
    except UsageError as exc:
        print(f"{PREFIX} {exc}", file=sys.stderr)
        return 2
    except RoidaskError as exc:  # its TypeError, ValueError and OSError kinds too
        print(f"{PREFIX} {flag_message(exc)}", file=sys.stderr)
        return 2
    options.update(extra)

    try:
        import dask_jobqueue  # noqa: F401  (imported now: it replaces the Ctrl-C handler)
    except ImportError as exc:
        print(f"{PREFIX} {exc} (install the roidask[jobqueue] extra)", file=sys.stderr)
        return 2
    handle_stop_signals()  # Ctrl-C and SIGTERM (scancel, timeout) stop the batch as one
    try:
        if args.print_job_script:
            print(print_job_script(args.kind, options))
            return 0
        # the batch's own checks (manifest, every input, --out) before any job is submitted
        batch_args = [args.manifest, "--out", args.out, *passthrough]
        status = int(cli.main(["batch", *batch_args, "--check"]) or 0)
        if status:
            return status
        with rcluster.jobqueue_cluster(args.kind, dashboard=args.dashboard, **options) as cluster:
            tls = cluster.tls_credentials
            watch = JobWatch(cluster, args.kind)
            try:
                _submit(cluster, args.jobs, args.kind)
                ids = ", ".join(j.job_id for j in cluster.workers.values() if j.job_id)
                print(
                    f"jobqueue_batch: submitted {args.jobs} {args.kind} job(s) for the dask "
                    f"workers ({ids}); scheduler at {cluster.scheduler_address} (TLS "
                    f"credentials of this batch in {tls.directory}, removed at the end)",
                    file=sys.stderr,
                )
                if args.dashboard and cluster.dashboard_link:
                    print(f"jobqueue_batch: dashboard {cluster.dashboard_link}", file=sys.stderr)
                watch.start()
                status = int(
                    cli.main(
                        [
                            "batch",
                            *batch_args,
                            "--scheduler",
                            cluster.scheduler_address,
                            *(
                                f"--{k.replace('_', '-')}={v}"
                                for k, v in tls.client_options().items()
                            ),
                        ]
                    )
                    or 0
                )
            finally:
                watch.stop()
            return 1 if watch.fired else status
    except SubmitError as exc:
        print(f"{PREFIX} {exc}", file=sys.stderr)
        return 2
    except RoidaskError as exc:  # its TypeError, ValueError and OSError kinds too
        print(f"{PREFIX} {flag_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # outside the batch (which says it itself)
        print(
            f"jobqueue_batch: {Terminated.describe(exc)}; the worker jobs are cancelled",
            file=sys.stderr,
        )
        return Terminated.status_of(exc)


if __name__ == "__main__":
    sys.exit(main())
