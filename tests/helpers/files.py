"""Small input files the tests write (batch manifests, images), damaged stores, locks."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def write_manifest(path: Path, rows: list[tuple]) -> Path:
    """A batch manifest TSV (subject, bold, labels, mask) with one line per row."""
    lines = ["subject\tbold\tlabels\tmask", *("\t".join(map(str, r)) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- damaged stores --------------------------------------------------------------------------
def damage_chunk(store: Path, key: str, how: str) -> Path:
    """Damage the chunk file ``store/key`` (e.g. ``sub-01/bold/c/0/0/0/3``).

    ``how``: ``"delete"`` it, ``"truncate"`` it to half its bytes, or ``"flip"`` 64
    bytes in its middle (a bit flip the compressor does not notice by itself).
    """
    chunk = Path(store) / key
    data = bytearray(chunk.read_bytes())
    if how == "delete":
        chunk.unlink()
    elif how == "truncate":
        chunk.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip":
        start = len(data) // 2 - 32
        for i in range(start, start + 64):
            data[i] ^= 0xFF
        chunk.write_bytes(bytes(data))
    else:  # pragma: no cover
        raise ValueError(how)
    return chunk


def format1_store(path: Path, bold, *, subject: str = "sub-01") -> Path:
    """A store as roidask 0.1 wrote it (format 1), built directly with zarr and xarray.

    ``bold``: a loaded or lazy BOLD DataArray (with ``condition``/``run`` coordinates
    and grid attributes). No chunk has a checksum (zarr's default codecs), the root
    attribute is ``roidask_store = 1`` and the complete group has no chunk inventory.
    """
    import numpy as np
    import xarray as xr
    import zarr

    zarr.open_group(str(path), mode="w", zarr_format=3).attrs["roidask_store"] = 1
    ds = xr.Dataset(
        {"bold": (bold.dims, np.asarray(bold.values))},
        coords={
            "time": ("time", np.asarray(bold["time"].values)),
            "condition": ("time", np.asarray(bold["condition"].values).astype(object)),
            "run": ("time", np.asarray(bold["run"].values)),
        },
        attrs={"subject": subject},
    )
    ds["bold"].attrs.update(
        {k: v for k, v in bold.attrs.items() if isinstance(v, str | int | float | list)}
    )
    ds.to_zarr(
        str(path),
        group=subject,
        mode="w",
        zarr_format=3,
        consolidated=False,
        encoding={"bold": {"chunks": (*bold.shape[:3], 100)}},
    )
    zarr.open_group(str(path / subject), mode="r+").attrs["roidask_complete"] = True
    return path


# -- small inputs ------------------------------------------------------------------------------
def write_bold(path: Path, n_volumes: int, *, tr_s: float = 2.0, shape=(4, 5, 3), seed=0) -> Path:
    """A small 4D float32 NIfTI run (random values) with ``tr_s`` in its header."""
    import nibabel as nib
    import numpy as np

    data = np.random.default_rng(seed).standard_normal((*shape, n_volumes)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((3.0, 3.0, 3.0, float(tr_s)))
    nib.save(img, str(path))
    return Path(path)


def write_events(path: Path, rows: list[tuple]) -> Path:
    """A BIDS events table: rows of (onset, duration, trial_type)."""
    lines = ["onset\tduration\ttrial_type", *("\t".join(map(str, r)) for r in rows)]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_image(path: Path, data, affine=None) -> Path:
    """A NIfTI image of ``data`` (3D or 4D) on ``affine`` (default: 3 mm voxels)."""
    import nibabel as nib
    import numpy as np

    affine = np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return Path(path)


def tree(folder: Path) -> dict[str, bytes]:
    """``{relative path: content}`` of every file under ``folder``, hidden ones included
    (folders as ``None``): to show that a command changed nothing."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def same_size_edit(data: bytes) -> bytes:
    """``data`` as a user's edit that keeps its size leaves it (a cell fixed in a table, a
    map replaced by another of the same size): one byte in its middle changed."""
    edited = bytearray(data)
    edited[len(edited) // 2] ^= 0x01
    return bytes(edited)


def as_roidask_wrote(folder: Path, *names: str) -> None:
    """Make ``folder``'s marker record its files ``names`` as they are now, as if roidask
    had written them so (a test's stand-in for an output of other results); their times
    are not recorded, so their contents are compared."""
    import json

    from roidask._atomic import MARKER, commit_record

    marker = json.loads((Path(folder) / MARKER).read_text())
    for field, values in commit_record(Path(folder), names, now_ns=0).items():
        marker.setdefault(field, {}).update(values)
        for name in set(names) - set(values):
            marker[field].pop(name, None)
    (Path(folder) / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


# -- another process ---------------------------------------------------------------------------
_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("held by another", flush=True)  # e.g. the test's own process: not waited for
    sys.exit(1)
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def locked_by_another_process(path: Path) -> Iterator[subprocess.Popen]:
    """A live process holds an exclusive ``flock`` on ``path`` (a file or a folder), as
    a roidask command writing it does; it is killed on exit (the kernel drops the lock)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
