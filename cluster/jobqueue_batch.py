"""Run ``roidask batch`` on a SLURM or PBS cluster, with dask workers as batch jobs.

Run it on a login node (or in a small job of its own): it starts a dask
scheduler here, submits ``--jobs`` worker jobs through dask-jobqueue, runs
``roidask batch MANIFEST --out DIR --scheduler <this scheduler>`` and cancels
the jobs at the end. Needs the ``roidask[jobqueue]`` extra.

The scheduler listens on this host's network, so it speaks TLS only: with a
CA certificate and a certificate/key made for this batch, written owner-only
(0700 directory, 0600 files) under ``--shared-temp-directory`` (default: the
home directory), which the worker jobs must see, and removed at the end. Other
users and anything else that reaches the port cannot join it or run code.

Examples
--------
Print the job script each worker job would run, submitting nothing::

    python cluster/jobqueue_batch.py --print-job-script --kind slurm \\
        --cores 8 --memory 32GiB --walltime 02:00:00 --queue normal

Run the batch on 4 jobs; options after MANIFEST (or after ``--``) that this
script does not know go to ``roidask batch``::

    python cluster/jobqueue_batch.py --kind slurm --cores 8 --memory 32GiB \\
        --walltime 02:00:00 --jobs 4 --interface ib0 manifest.tsv --out results
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobqueue_batch.py",
        description="Run `roidask batch` on dask workers submitted as SLURM or PBS jobs. "
        "Options this script does not know are passed on to `roidask batch`.",
    )
    p.add_argument("manifest", nargs="?", help="the batch manifest (a TSV, see `roidask batch`)")
    p.add_argument("--out", help="output directory, passed to `roidask batch --out`")
    p.add_argument("--kind", choices=("slurm", "pbs"), default="slurm", help="batch system")
    p.add_argument("--cores", type=int, required=True, help="cores per job")
    p.add_argument("--memory", required=True, help="memory per job, e.g. 32GiB")
    p.add_argument("--walltime", required=True, help="time limit per job, e.g. 02:00:00")
    p.add_argument("--jobs", type=int, default=1, help="number of worker jobs (default 1)")
    p.add_argument("--queue", default=None, help="partition (SLURM) or queue (PBS)")
    p.add_argument("--account", default=None, help="account/project to charge")
    p.add_argument("--python", default=None, help="python on the compute nodes")
    p.add_argument(
        "--interface",
        default=None,
        help="network interface the compute nodes reach this host on, e.g. ib0",
    )
    p.add_argument(
        "--job-name", default=None, help="name of the worker jobs (default: dask-worker)"
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes per job (default: dask-jobqueue's choice)",
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
        help="print the job script each worker job runs, and exit",
    )
    return p


def _split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit status (that of ``roidask batch`` when it ran)."""
    from roidask import cli
    from roidask import cluster as rcluster
    from roidask.exceptions import RoidaskError, RoidaskTypeError

    parser = build_parser()
    own, after_dashdash = _split_argv(list(sys.argv[1:] if argv is None else argv))
    args, passthrough = parser.parse_known_args(own)
    passthrough += after_dashdash
    if args.jobs < 1:
        parser.error(f"--jobs: expected a positive number of jobs, got {args.jobs}")

    options = {
        "cores": args.cores,
        "memory": args.memory,
        "walltime": args.walltime,
        "queue": args.queue,
        "account": args.account,
        "python": args.python,
        "job_extra_directives": args.job_extra,
    }
    for name in ("interface", "processes", "log_directory", "shared_temp_directory", "job_name"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)

    try:
        if args.print_job_script:
            print(rcluster.job_script(args.kind, **options))
            return 0
        if args.manifest is None or args.out is None:
            parser.error("MANIFEST and --out are required (unless --print-job-script)")
        with rcluster.jobqueue_cluster(args.kind, dashboard=args.dashboard, **options) as cluster:
            cluster.scale(jobs=args.jobs)
            tls = cluster.tls_credentials
            print(
                f"jobqueue_batch: submitted {args.jobs} {args.kind} job(s) for the dask "
                f"workers; scheduler at {cluster.scheduler_address} (TLS credentials of this "
                f"batch in {tls.directory}, removed at the end)",
                file=sys.stderr,
            )
            if args.dashboard and cluster.dashboard_link:
                print(f"jobqueue_batch: dashboard {cluster.dashboard_link}", file=sys.stderr)
            batch_argv = [
                "batch",
                args.manifest,
                "--out",
                args.out,
                "--scheduler",
                cluster.scheduler_address,
                *(f"--{k.replace('_', '-')}={v}" for k, v in tls.client_options().items()),
                *passthrough,
            ]
            return int(cli.main(batch_argv) or 0)
    except (RoidaskError, RoidaskTypeError, ImportError) as exc:
        print(f"jobqueue_batch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
