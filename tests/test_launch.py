"""The ``roidask`` console script (roidask._launch) and the workers' forkserver
(roidask._forkserver): embedded workers start with roidask imported, and the
launcher starts their server before importing the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import dask
import pytest

from roidask._forkserver import CHOICE_VARIABLE, WORKER_ENVIRON, WORKER_MODULES, start_method
from roidask._launch import starts_embedded_workers
from roidask.cluster import get_client
from roidask.exceptions import Terminated

pytestmark = pytest.mark.timeout(120)


def test_console_script_is_the_launcher():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "roidask"]
    assert script.value == "roidask._launch:entry"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["batch", "m.tsv", "--out", "o"], True),
        (["group", "study.zarr"], True),
        (["batch", "m.tsv", "--scheduler", "local"], True),
        (["batch", "m.tsv", "--scheduler=local"], True),
        (["batch", "m.tsv", "--scheduler", "tcp://10.0.0.1:8786"], False),
        (["group", "s", "--scheduler=tls://host:8786"], False),
        (["batch", "m.tsv", "--sched", "tcp://10.0.0.1:8786"], False),  # argparse prefixes
        (["batch", "m.tsv", "--sch=tcp://10.0.0.1:8786"], False),
        (["batch", "m.tsv", "--seed", "3"], True),  # not --scheduler
        (["batch", "--help"], False),
        (["run", "bold.nii.gz", "--scheduler", "local"], False),  # threads of this process
        (["convert", "bold.nii.gz"], False),
        ([], False),
    ],
)
def test_which_commands_start_embedded_workers(argv, expected):
    assert starts_embedded_workers(argv) is expected


def test_launcher_starts_the_server_before_heavy_imports():
    """The point of the launcher: the forkserver starts (and imports the engine in its own
    process) while this process has imported nothing heavy yet."""
    code = (
        "import sys, multiprocessing.forkserver as fs\n"
        "from roidask._forkserver import start_method\n"
        "assert start_method() == 'forkserver'\n"
        "heavy = [m for m in ('numpy', 'dask', 'distributed', 'roidask.cli')\n"
        "         if m in sys.modules]\n"
        "print('heavy:', heavy, 'server:', fs._forkserver._forkserver_pid is not None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in WORKER_ENVIRON}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "heavy: [] server: True" in out.stdout


def test_embedded_workers_fork_with_roidask_imported(monkeypatch):
    for key in WORKER_ENVIRON:
        monkeypatch.delenv(key, raising=False)

    def state():
        import sys as worker_sys

        return {
            "modules": [m for m in WORKER_MODULES if m in worker_sys.modules],
            "env": {k: os.environ.get(k) for k in WORKER_ENVIRON},
        }

    with get_client(n_workers=2, threads_per_worker=1, memory_limit="1GiB") as client:
        seen = client.run(state)  # before any task: nothing imported it but the server
    assert len(seen) == 2
    for worker in seen.values():
        assert worker["modules"] == list(WORKER_MODULES)
        assert worker["env"] == WORKER_ENVIRON  # distributed's pre-spawn environment


def test_starting_the_server_leaves_this_process_environment(monkeypatch):
    for key in WORKER_ENVIRON:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = dict(os.environ)
    assert start_method() == "forkserver"
    assert dict(os.environ) == before


def test_batch_command_through_the_launcher_reports_bad_input(tmp_path):
    roidask = os.path.join(os.path.dirname(sys.executable), "roidask")
    out = subprocess.run(
        [roidask, "batch", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "missing.tsv" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_forked_workers_get_this_process_environment(monkeypatch):
    """A forked worker has the server's environment; its nanny hands it the client's as it
    is when the cluster starts (credentials set after the server started, say)."""
    assert start_method() == "forkserver"  # the server is up before the variable is set
    monkeypatch.setenv("ROIDASK_TEST_SETTING", "set-after-the-server-started")
    with get_client(n_workers=1, threads_per_worker=1, memory_limit="1GiB") as client:
        seen = client.run(lambda: os.environ.get("ROIDASK_TEST_SETTING"))
    assert list(seen.values()) == ["set-after-the-server-started"]


def test_a_server_that_cannot_start_falls_back_to_spawn(monkeypatch):
    import multiprocessing.forkserver

    def refuse():
        raise PermissionError(13, "Permission denied", "/tmp/pymp-xyz")

    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", refuse)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert start_method() == "spawn"
    assert "OMP_NUM_THREADS" not in os.environ


def test_the_users_start_method_wins(monkeypatch):
    monkeypatch.setenv(CHOICE_VARIABLE, "spawn")
    assert start_method() == "spawn"
    with get_client(n_workers=1, threads_per_worker=1, memory_limit="1GiB") as client:
        (modules,) = client.run(lambda: "roidask.batch" in __import__("sys").modules).values()
    assert modules is False  # a fresh interpreter: nothing imported before a task


def test_threaded_workers_ignore_the_forkserver_setting():
    """Workers in this process's threads take no nanny options (a TypeError before)."""
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        with get_client(processes=False, n_workers=1, threads_per_worker=1) as client:
            assert client.submit(sum, [1, 2]).result(timeout=10) == 3


@pytest.mark.parametrize(
    ("stop", "status", "how"),
    [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated (SIGTERM)")],
)
def test_stopped_while_starting_is_one_line(monkeypatch, capsys, stop, status, how):
    """Ctrl-C or SIGTERM while the command line is imported (~1 s of every start): one line
    naming what stopped it and its exit status, as once the command runs, not a traceback
    out of pandas' imports."""
    import types

    from roidask import _launch

    class Importing(types.ModuleType):
        def __getattr__(self, name):
            raise stop

    monkeypatch.setitem(sys.modules, "roidask.cli", Importing("roidask.cli"))
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # entry() replaces it
    monkeypatch.setattr(sys, "argv", ["roidask", "run", "bold.nii.gz"])
    with pytest.raises(SystemExit) as exit_info:
        _launch.entry()
    assert exit_info.value.code == status
    assert capsys.readouterr().err == f"roidask: {how} while starting; nothing was written\n"


_SLOW_WRITE = """
import sys, time
from roidask._atomic import OutputFolder
real = OutputFolder.commit
def slow(self, **kwargs):  # every output written, in the temporary folder
    print("writing", flush=True)
    time.sleep(60)
    return real(self, **kwargs)
OutputFolder.commit = slow
from roidask._launch import entry
sys.argv = ["roidask", *sys.argv[1:]]
entry()
"""


def test_sigterm_while_writing_keeps_nothing_partial(haxby, tmp_path):
    # kill, timeout and SLURM's scancel send SIGTERM: handled as Ctrl-C is
    out = tmp_path / "out"
    args = ["run", str(haxby.bold), "--labels", str(haxby.labels), "--mask", str(haxby.mask),
            "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # being written
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip().splitlines() == [
        "roidask: terminated (SIGTERM); no partial output was kept"
    ]
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder left


def test_embedded_workers_drop_what_a_closing_scheduler_makes_them_log():
    """The embedded cluster's workers run :func:`roidask._forkserver.dask_setup` (a worker
    preload): distributed's lines about a scheduler closing under them are dropped, the rest
    of their log is kept."""
    import logging

    from roidask._forkserver import CLOSING_NOISE, dask_setup

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    loggers = {name: logging.getLogger(name) for name in CLOSING_NOISE}
    before = {name: list(logger.filters) for name, logger in loggers.items()}
    kept = Keep()
    with get_client(processes=False, n_workers=1, threads_per_worker=1) as client:
        # the preload ran in this process's worker
        assert client.submit(sum, [1, 2]).result(timeout=10) == 3
        try:
            for logger in loggers.values():
                logger.addHandler(kept)
            state_machine = loggers["distributed.worker.state_machine"]
            state_machine.warning("Async instruction for <Task> ended with CancelledError")
            loggers["distributed.worker"].error(
                "Failed to communicate with scheduler during heartbeat."
            )
            loggers["distributed.worker"].warning("Scheduler was unaware of this worker; bye")
            loggers["distributed.worker"].warning("Worker is at 85% memory usage.")
            dask_setup(None)  # again: one filter per logger
            noise = [
                [type(f).__name__ for f in lg.filters].count("_ClosingNoise")
                for lg in loggers.values()
            ]
            assert noise == [1, 1]
        finally:
            for name, logger in loggers.items():
                logger.removeHandler(kept)
                logger.filters[:] = before[name]
    assert kept.messages == ["Worker is at 85% memory usage."]


def test_embedded_workers_keep_the_users_preloads(tmp_path):
    """roidask's worker preload is added to the user's (distributed.worker.preload), which
    a preload argument would otherwise replace."""
    mark = tmp_path / "mark"
    script = tmp_path / "user_preload.py"
    script.write_text(f"def dask_setup(worker):\n    open({str(mark)!r}, 'w').write('ran')\n")
    with dask.config.set({"distributed.worker.preload": [str(script)]}):
        with get_client(processes=False, n_workers=1, threads_per_worker=1) as client:
            assert client.submit(sum, [1, 2]).result(timeout=10) == 3
    assert mark.read_text() == "ran"


_STOPPED_IN_A_CALLBACK = """
import os, signal, sys, time, weakref
from roidask._launch import handle_stop_signals
handle_stop_signals()
class Thing:
    pass
def callback(ref):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    for _ in range(100):  # the handler runs here, where Python drops its exception
        pass
thing = Thing()
ref = weakref.ref(thing, callback)
try:
    del thing
    time.sleep(30)
except KeyboardInterrupt as exc:
    print(type(exc).__name__)
    sys.exit(3)
print("went on to the end")
"""


@pytest.mark.parametrize(("signum", "raised"), [("SIGTERM", "Terminated"),
                                                 ("SIGINT", "KeyboardInterrupt")])  # fmt: skip
def test_a_stop_signalled_inside_a_weakref_callback_still_stops(signum, raised):
    # Python prints "Exception ignored" and drops an exception raised in a weakref callback
    # or a __del__: a SIGTERM arriving there let `roidask run` go on and exit 0
    done = subprocess.run(
        [sys.executable, "-c", _STOPPED_IN_A_CALLBACK, signum],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (3, raised), done
    assert "Exception ignored" not in done.stderr, done.stderr


_DROPPED_AS_IT_ENDS = """
import os, signal, sys, weakref
from roidask._launch import handle_stop_signals
handle_stop_signals()
from roidask import cli
class Thing:
    pass
def main(argv=None):  # the command's last moment: a SIGTERM lands in a weakref callback
    def callback(ref):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            pass
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    return 0
cli.main = main
cli.entry()
"""


def test_a_stop_dropped_as_the_command_ends_is_its_exit_status():
    # signalled again 50 ms later, it came after the command's prompt exit: status 0
    done = subprocess.run([sys.executable, "-c", _DROPPED_AS_IT_ENDS],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stderr) == (
        143,
        "roidask: terminated (SIGTERM) as it ended; what it wrote is complete\n",
    )
