"""Tests of ``./dev``, the developer entry point (a POSIX shell script).

Its help and errors run the repository's script as is (they set nothing up). What needs a
virtual environment runs a copy of the script in a folder of its own, with the project's
``pyproject.toml`` and lock, so that nothing of the repository's ``.venv`` is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "dev"
LOCK = "requirements/constraints.txt"


def run_dev(dev: Path, *args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(dev), *args], capture_output=True, text=True, timeout=30, check=False,
        cwd=cwd, env={**os.environ, **env},
    )  # fmt: skip


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of ./dev with the files it reads, and no .venv."""
    root = tmp_path / "project"
    (root / "requirements").mkdir(parents=True)
    for name in ("dev", "pyproject.toml", LOCK):
        shutil.copy2(ROOT / name, root / name)
    return root


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_is_a_success(flag):
    out = run_dev(DEV, flag)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: ./dev TASK [ARGS]\n")
    for task in ("demo", "test", "test-latest", "lock"):
        assert f"\n  {task} " in out.stdout
    assert out.stderr == ""


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (["foo"], "dev: unknown task 'foo': expected demo, test, test-latest or lock"),
        ([], "dev: no task given: demo, test, test-latest or lock"),
    ],
)
def test_a_wrong_task_is_one_line_naming_it(args, want):
    out = run_dev(DEV, *args)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"{want} (see ./dev --help)"]


def test_the_python_version_is_checked_before_anything_is_installed(project):
    """The interpreter is checked against pyproject.toml's requires-python before a venv
    is made (pip's errors would speak of versions no release satisfies, and of ./dev lock)."""
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert 'requires-python = ">=3.11"\n' in text
    pyproject.write_text(text.replace('requires-python = ">=3.11"', 'requires-python = ">=3.99"'))
    version = ".".join(map(str, sys.version_info[:3]))
    # no package index: a script that went on to pip would fail there, not install
    out = run_dev(project / "dev", "demo", PYTHON=sys.executable, PIP_NO_INDEX="1")
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        f"dev demo: needs Python >= 3.99 (pyproject.toml's requires-python; set PYTHON, e.g. "
        f"PYTHON=python3.99), found Python {version} ({sys.executable})"
    ]
    assert not (project / ".venv").exists()
    out = run_dev(project / "dev", "test", PYTHON="no-such-python3")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "dev test: PYTHON=no-such-python3: no such command (set PYTHON to a Python >= 3.99)"
    ]


def test_demo_paths_are_relative_to_where_dev_runs(project, tmp_path):
    """./dev runs in the repository, the demo where it was run: --out REL is there."""
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    # a set-up .venv whose roidask says where it runs and with what
    (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "roidask").write_text('#!/bin/sh\npwd\nprintf "%s\\n" "$@"\n')
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    stamp = subprocess.run(["cksum", "pyproject.toml", LOCK], capture_output=True, text=True,
                           cwd=project, check=True).stdout  # fmt: skip
    (project / ".venv" / ".roidask-installed").write_text(stamp)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_dev(project / "dev", "demo", "--out", "results", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [str(elsewhere), "demo", "--out", "results"]
