"""roidask: parallel, chunked, out-of-core fMRI region-of-interest analysis.

Submodules are imported on first use so that ``import roidask`` stays cheap.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("roidask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__", "cluster", "datasets", "exceptions", "io", "ops", "pipeline", "plotting"]


def __getattr__(name):
    if name in __all__:
        return import_module(f"roidask.{name}")
    raise AttributeError(f"module 'roidask' has no attribute {name!r}")
