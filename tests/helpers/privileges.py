"""Running a command as a user the file permissions apply to (root drops CAP_DAC_OVERRIDE).

As root, ``chmod 000`` hides nothing: root's capabilities CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH bypass file permissions. :func:`unprivileged` prefixes a
command with util-linux's ``setpriv`` dropping both (inheritable and bounding
sets), so the command meets permissions as any user would; for a non-root user
the command is returned as is. Tests skip, with the reason, only if ``setpriv`` is
missing or not allowed to drop them here.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_CAPS = "-dac_override,-dac_read_search"
#: Runs many ``roidask`` command lines in one process (see the script).
CLI_CASES = Path(__file__).with_name("cli_cases.py")


@functools.cache
def _setpriv() -> list[str] | str:
    """The setpriv prefix, or why permissions cannot be tested."""
    exe = shutil.which("setpriv")
    if exe is None:
        return "setpriv (util-linux) is missing: as root, file permissions cannot be tested"
    prefix = [exe, f"--inh-caps={_CAPS}", f"--bounding-set={_CAPS}"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"setpriv cannot drop CAP_DAC_OVERRIDE here: {probe.stderr.strip()}"
    return prefix


def unprivileged(cmd: list) -> list[str]:
    """``cmd`` (a list of arguments) run so that file permissions apply to it."""
    cmd = [str(c) for c in cmd]
    if os.geteuid() != 0:
        return cmd
    prefix = _setpriv()
    if isinstance(prefix, str):
        pytest.skip(prefix)
    return [*prefix, *cmd]


def roidask_cmd(*args) -> list[str]:
    """``python -m roidask.cli ARGS``."""
    return [sys.executable, "-m", "roidask.cli", *map(str, args)]


def run_unprivileged(cases: list[dict], workdir: Path) -> list[dict]:
    """Run ``roidask`` command lines (see :data:`CLI_CASES`) in one unprivileged process."""
    spec, results = workdir / "cases.json", workdir / "results.json"
    spec.write_text(json.dumps([{**c, "argv": [str(a) for a in c["argv"]]} for c in cases]))
    cmd = unprivileged([sys.executable, CLI_CASES, spec, results])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(results.read_text())
