"""Run the processes a benchmark starts from compiled bytecode, as an installed package runs.

``pip install roidask`` compiles the package's modules to bytecode when it installs them,
as it did for every other package in the environment (nilearn, dask, ...). This checkout
is an *editable* install: Python compiles roidask's modules on first import and caches the
bytecode in ``__pycache__`` folders (gitignored), unless ``PYTHONDONTWRITEBYTECODE`` is
set, as it is on the machines these benchmarks ran on. Then every ``roidask`` process
compiles its ~60 modules from source again: about 0.18 s of each start that no installed
copy pays.

:func:`use_compiled_bytecode` removes that variable for the processes the benchmark starts
(they inherit the environment) and compiles the package once, beside its sources, before
anything is timed. Every other package keeps the bytecode pip wrote (no
``PYTHONPYCACHEPREFIX``, which would make the first process compile all of them), and both
sides of a comparison run with the same environment.
"""

from __future__ import annotations

import compileall
import os
from pathlib import Path


def use_compiled_bytecode() -> Path:
    """Compile roidask beside its sources; the benchmark's children read it. Returns the
    package's folder."""
    import roidask

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.pop("PYTHONPYCACHEPREFIX", None)
    package = Path(roidask.__file__).parent
    if not compileall.compile_dir(package, quiet=1):
        raise RuntimeError(f"could not compile {package}")
    return package
