"""Read handles of the files a batch's subjects have in flight, dropped when a file is done."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from roidask.cluster import active_client
from roidask.io.locations import is_remote
from roidask.io.nifti import release_handles

__all__ = ["OpenFiles", "release_everywhere"]


def _name(path) -> str:
    """One name per file: an ``s3://`` URL, or the real path of a local file."""
    return str(path) if is_remote(path) else os.path.realpath(path)


class OpenFiles:
    """Input files of the subjects in flight; a file's read handles are dropped when done.

    Workers cache one read handle per NIfTI file (a ``.nii.gz`` one holds its
    seek index and a ~16 MB read buffer, even for a small mask): without this a
    worker's memory grows with every subject of the batch until it is paused or
    killed.
    """

    def __init__(self, release: Callable[[list[str]], object] | None = None):
        # what drops a done file's handles: here and on every worker (a batch's client),
        # or in this process only (a worker running whole subjects)
        self._release = release_everywhere if release is None else release
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, files) -> None:
        with self._lock:
            for f in {_name(p) for p in files}:
                self._count[f] = self._count.get(f, 0) + 1

    def release(self, files) -> None:
        done = []
        with self._lock:
            for f in {_name(p) for p in files}:
                self._count[f] -= 1
                if not self._count[f]:
                    del self._count[f]
                    done.append(f)
        if done:
            self._release(done)


def release_everywhere(paths) -> None:
    """Drop the cached read handles of ``paths`` here and on every worker."""
    paths = [str(p) for p in paths]
    release_handles(paths)
    client = active_client()
    if client is None:
        return
    try:
        client.run(release_handles, paths, on_error="ignore")
    except Exception:  # a worker lost meanwhile: its handles went with it
        pass
