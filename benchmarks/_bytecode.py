"""Run the processes a benchmark starts from compiled bytecode, as an installed package runs.

``pip install roidask`` compiles the package's modules to bytecode when it installs them,
as it did for every other package in the environment (nilearn, dask, ...). This checkout
is an *editable* install: Python compiles roidask's modules on first import and caches the
bytecode in ``__pycache__`` folders, unless ``PYTHONDONTWRITEBYTECODE`` is set, as it is on
the machines these benchmarks ran on. Then every ``roidask`` process compiles its ~60
modules from source again: about 0.18 s of each start that no installed copy pays.

:func:`use_compiled_bytecode` removes that variable for the processes the benchmark starts
(they inherit the environment), keeps the bytecode out of the source tree (in
``benchmarks/data/pycache``, gitignored, via ``PYTHONPYCACHEPREFIX``) and compiles the
package once before anything is timed. Both sides of a comparison run with the same
environment.
"""

from __future__ import annotations

import compileall
import os
import sys
from pathlib import Path

PYCACHE = Path(__file__).resolve().parent / "data" / "pycache"


def use_compiled_bytecode() -> Path:
    """Compile roidask into :data:`PYCACHE`; the benchmark's children read it. Returns it."""
    import roidask

    PYCACHE.mkdir(parents=True, exist_ok=True)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    sys.pycache_prefix = str(PYCACHE)  # compileall writes where this process would read
    package = Path(roidask.__file__).parent
    if not compileall.compile_dir(package, quiet=1):
        raise RuntimeError(f"could not compile {package}")
    return PYCACHE
