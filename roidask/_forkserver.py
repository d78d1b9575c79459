"""Worker processes that start with roidask already imported: a preloaded forkserver.

The embedded cluster's workers are separate processes. Started with ``spawn``
(distributed's default), each one imports numpy, dask, distributed, xarray, zarr,
scipy and roidask itself before its first task: ~1.3 s of CPU per worker, paid
again by every batch, while the client waits. With the ``forkserver`` start method
the imports happen once, in a server process that then forks a worker in
milliseconds; and the ``roidask`` command starts that server before it imports
its own modules (:mod:`roidask._launch`), so that the workers' imports run on one
core while the client's run on another.

The server is a fresh interpreter (not a fork of the client, whose threads and
runtimes would not survive a fork). It gets distributed's pre-spawn environment
(``distributed.nanny.pre-spawn-environ``: one BLAS thread, the hash seed): the
libraries read them when the server imports them, and its workers inherit that
state; each worker then gets the client's current environment from its nanny.
Where ``forkserver`` is not available (Windows) or cannot start, workers are
spawned as before; ``DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=spawn``
chooses that. Settings of distributed's ``pre-spawn-environ`` other than these
defaults must be environment variables (the server starts before dask's
configuration is read). If the server dies, distributed restarts every worker (their
tasks are redone) from a new server that has only distributed's own preload list.

Each worker also preloads this module (:data:`WORKER_PRELOAD`, however it started):
:func:`dask_setup` silences what distributed's workers log when the roidask process
closes their scheduler early (:data:`CLOSING_NOISE`); :func:`quiet_nannies` does the
same for the nannies, which live in the roidask process (:data:`NANNY_NOISE`).

Standard library only: the launcher imports this before anything heavy.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import threading

__all__ = [
    "CHOICE_VARIABLE",
    "CLOSING_NOISE",
    "NANNY_NOISE",
    "WORKER_ENVIRON",
    "WORKER_MODULES",
    "WORKER_PRELOAD",
    "dask_setup",
    "quiet_nannies",
    "start_method",
]

#: Modules the forkserver imports once for all workers: a worker of a batch runs
#: subject tasks (roidask.batch imports the whole engine) under distributed.
WORKER_MODULES = ("distributed", "roidask.batch")
#: Environment of the forkserver, inherited by every worker: distributed's defaults
#: for its nannies' ``pre-spawn-environ`` (a variable the user set wins).
WORKER_ENVIRON = {
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "PYTHONHASHSEED": "6640",
}
#: distributed's setting of the start method, as an environment variable: set, it
#: wins (e.g. ``spawn``: every worker a fresh interpreter, as distributed does).
CHOICE_VARIABLE = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"
#: distributed's worker preload (``Nanny(preload=...)``) of the embedded cluster's
#: workers: this module, whose :func:`dask_setup` runs in each worker process.
WORKER_PRELOAD = __name__
_LOCK = threading.Lock()


def start_method() -> str:
    """Start the workers' forkserver unless it runs; return the start method to use.

    Returns
    -------
    str
        ``"forkserver"`` (the server is running, with :data:`WORKER_MODULES`
        imported or being imported); ``"spawn"`` where the platform has no
        forkserver or it cannot be started; the method named by
        :data:`CHOICE_VARIABLE` if it is set to another one.
    """
    chosen = os.environ.get(CHOICE_VARIABLE)
    if chosen and chosen != "forkserver":  # the user's choice (distributed's own setting)
        return chosen
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    with _LOCK:
        multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_MODULES))
        changed = {
            k: os.environ.get(k)
            for k in WORKER_ENVIRON
            if os.environ.get(k) in (None, "") or (k == "PYTHONHASHSEED" and os.environ[k] == "0")
        }
        os.environ.update({k: WORKER_ENVIRON[k] for k in changed})
        try:
            multiprocessing.forkserver.ensure_running()  # the server inherits os.environ
        except OSError:  # no socket or process for it (a read-only /tmp, a process limit)
            return "spawn"
        finally:
            for key, value in changed.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return "forkserver"


#: What distributed's workers log when their scheduler closes under them, by logger: the
#: embedded cluster's scheduler lives in the roidask process, which closes it only when
#: the command ends (early, on Ctrl-C, SIGTERM or an error: the tasks still running are
#: cancelled). After roidask's own last line, these tell the user nothing more.
CLOSING_NOISE = {
    # one warning per task still running ("... ended with CancelledError")
    "distributed.worker.state_machine": ("Async instruction for ",),
    # an ERROR with a traceback, from a heartbeat sent as the scheduler closes
    "distributed.worker": (
        "Failed to communicate with scheduler during heartbeat",
        "Scheduler was unaware of this worker",
    ),
}


#: What the embedded cluster's nannies log when it closes early (Ctrl-C, SIGTERM, an
#: error): they run in the roidask process and stop its worker processes; a worker still
#: running a task does not stop in time and is killed, which is what closing meant.
NANNY_NOISE = {"distributed.nanny": ("Worker process still alive after",)}


class _ClosingNoise(logging.Filter):
    """Drops a logger's records that start with ``prefixes`` (:data:`CLOSING_NOISE`,
    :data:`NANNY_NOISE`)."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def dask_setup(worker: object) -> None:
    """distributed's preload hook, run in each embedded-cluster worker process: silences
    :data:`CLOSING_NOISE`.

    Parameters
    ----------
    worker : distributed.Worker
        Unused: the setting is the process's logging.
    """
    _silence(CLOSING_NOISE)


def _silence(noise: dict[str, tuple[str, ...]]) -> list[tuple[logging.Logger, logging.Filter]]:
    """Filter ``noise`` out of its loggers (once); the filters added, by logger."""
    added: list[tuple[logging.Logger, logging.Filter]] = []
    for name, prefixes in noise.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ClosingNoise) for f in logger.filters):
            added.append((logger, _ClosingNoise(prefixes)))
            logger.addFilter(added[-1][1])
    return added


@contextlib.contextmanager
def quiet_nannies():
    """While the embedded cluster lives and closes: silences :data:`NANNY_NOISE` in this
    process (not another cluster's nannies after it)."""
    added = _silence(NANNY_NOISE)
    try:
        yield
    finally:
        for logger, noise in added:
            logger.removeFilter(noise)
