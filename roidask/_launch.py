"""The ``roidask`` console script: start the workers' forkserver, then the command.

``roidask batch`` and ``roidask group`` start an embedded cluster whose workers
fork from a server that imports the engine once (:mod:`roidask._forkserver`).
Started here, before :mod:`roidask.cli` and its imports, the server imports on
one core while this process imports on the other: a 4-subject batch starts its
first subjects ~2 s sooner (BENCHMARKS.md, "Many subjects"). Any other command,
or a command given a scheduler address, goes straight to the command line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from roidask._forkserver import start_method
from roidask.exceptions import Terminated

__all__ = ["entry", "starts_embedded_workers"]

#: Commands that start an embedded cluster of worker processes unless given an address.
_CLUSTER_COMMANDS = ("batch", "group")
#: Delay before a stop that Python dropped is signalled again (s).
_STOP_AGAIN_S = 0.05


def starts_embedded_workers(argv: Sequence[str]) -> bool:
    """Whether command line ``argv`` (without the program) starts local worker processes."""
    if not argv or argv[0] not in _CLUSTER_COMMANDS or {"-h", "--help"} & set(argv):
        return False
    scheduler = "local"
    for i, arg in enumerate(argv):
        option, has_value, value = arg.partition("=")
        # argparse takes any unambiguous prefix: --sch, --sched, ... (--s is ambiguous)
        if len(option) < len("--sch") or not "--scheduler".startswith(option):
            continue
        if has_value:
            scheduler = value
        elif i + 1 < len(argv):
            scheduler = argv[i + 1]
    return scheduler == "local"


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _stop_again(unraisable: Any) -> None:
    """``sys.unraisablehook``: a stop raised where Python can only print and drop it.

    A signal's handler runs wherever the main thread is; inside a weakref callback or a
    ``__del__`` its exception is "ignored" and the command went on to the end (exit 0
    after a SIGTERM). The signal is sent again instead, to stop the command where the
    exception can propagate; any other unraisable exception is Python's to report.
    """
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        # sent a moment later, from another thread: sent now, its handler would run
        # in this hook, where Python drops its exception too (and a handler that runs
        # again where it is dropped comes back here)
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        Terminated.dropped.append(signum)  # the exit status, should the command end first
        again = threading.Timer(_STOP_AGAIN_S, os.kill, args=(os.getpid(), signum))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def handle_stop_signals() -> None:
    """Ctrl-C raises :class:`KeyboardInterrupt` (Python's own handler, which libraries
    such as dask-jobqueue replace when imported) and SIGTERM raises
    :class:`~roidask.exceptions.Terminated`: a command stops as one, however stopped,
    even when the signal arrives while a weakref callback or a ``__del__`` runs."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _stop_again


def entry() -> None:
    """Run the ``roidask`` command line (:func:`roidask.cli.entry`); SIGTERM is handled
    as Ctrl-C is (:class:`~roidask.exceptions.Terminated`)."""
    handle_stop_signals()
    try:
        if starts_embedded_workers(sys.argv[1:]):
            start_method()
        # Imported now, not at the top: the server's imports must start before these.
        from roidask.cli import entry as cli_entry  # noqa: PLC0415
    except KeyboardInterrupt as exc:  # Ctrl-C while starting: nothing was written yet
        how = Terminated.describe(exc)
        print(f"roidask: {how} while starting; nothing was written", file=sys.stderr)
        raise SystemExit(Terminated.status_of(exc)) from None
    cli_entry()
