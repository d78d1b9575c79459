"""Atomic outputs, ownership markers and the cleanup of what killed runs left behind.

Every file and folder roidask writes goes through this module:

* a **file** is written to a hidden temporary sibling, then renamed over its
  final name (:func:`atomic_file`, :func:`write_text`, :func:`write_bytes`);
* a **folder** (a subject's results, a group level, a store being converted) is
  built in a hidden temporary sibling (:class:`OutputFolder`) that holds an
  ownership marker, :data:`MARKER` (``.roidask.json``: what wrote it, when,
  and every file it holds, with its size, modification time and CRC-32C), and is
  renamed into place when complete. A folder it replaces is swapped out in the same
  system call (Linux ``renameat2`` ``RENAME_EXCHANGE``), so there is no moment with
  neither, and removed after.

Nothing else is ever deleted: :func:`check_destination` refuses to replace a
path that roidask did not write (no marker), a folder that holds files roidask
did not write or changed since (:func:`changed_since_commit`), or one that
contains an input of the command; it also checks, before any data is read, that
the parent folder exists and is writable.

Temporary siblings are named ``.<name>.roidask-tmp-<pid>-<random>`` and are
locked (``flock``) by the process writing them for as long as it lives. A
killed run leaves them behind unlocked; :func:`clean_stale` (called by every
command on its destination) removes exactly those, never the siblings of a
run still in progress.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import google_crc32c

from roidask.exceptions import LockWarning, OutputError, OutputExistsError, RoidaskError

__all__ = [
    "MARKER",
    "FolderLock",
    "InputIndex",
    "OutputFolder",
    "atomic_file",
    "changed_since_commit",
    "check_destination",
    "check_not_held",
    "check_not_input",
    "check_parent",
    "clean_stale",
    "crc32c_reader",
    "create_locked",
    "file_crc32c",
    "file_state",
    "is_roidask_folder",
    "read_marker",
    "scratch_file",
    "swap_into_place",
    "temp_sibling",
    "write_bytes",
    "write_text",
]

#: Ownership marker written into every folder roidask creates.
MARKER = ".roidask.json"
_TMP = "roidask-tmp"
_OLD = "roidask-old"
# renameat2(2): AT_FDCWD and RENAME_EXCHANGE (linux/fcntl.h, linux/fs.h)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def temp_sibling(path: Path, kind: str = _TMP) -> Path:
    """A new hidden name beside ``path`` that :func:`clean_stale` recognises (``path``
    made absolute first: ``.`` has no sibling of its own)."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _stale_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.(?:{_TMP}|{_OLD})-\d+-[0-9a-f]{{8}}$")


def _lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False if someone holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def create_locked(
    path: str | os.PathLike, kind: str = _TMP, *, folder: bool, mode: int | None = None
) -> tuple[Path, int]:
    """Create a new temporary sibling of ``path`` (a folder, or an empty file) and lock it.

    Another process's :func:`clean_stale` may take the new sibling for a killed run's
    in the moment between its creation and its lock; then it is created again under
    another name, so the lock held is always on the sibling that exists.

    Parameters
    ----------
    path : path
        What the sibling is for (its name is ``.<name>.<kind>-<pid>-<random>``).
    kind : str
        The temporary kind (:data:`_TMP`: cleaned by :func:`clean_stale`).
    folder : bool
        Create a folder, else an empty file.
    mode : int, optional
        Permissions of the new file or folder (before the umask; default 0o600 for a
        file, 0o777 for a folder).

    Returns
    -------
    tuple of (Path, int)
        The sibling, and the open descriptor holding its lock (close it to release).
    """
    for _ in range(100):
        tmp = temp_sibling(Path(path), kind)
        if folder:
            os.mkdir(tmp, 0o777 if mode is None else mode)
        else:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode or 0o600))
        try:
            fd = os.open(tmp, os.O_RDONLY if folder else os.O_RDWR)
        except FileNotFoundError:
            continue  # removed before it could be opened
        try:
            locked = _lock(fd)
            if locked and os.fstat(fd).st_ino == os.stat(tmp).st_ino:
                return tmp, fd
        except FileNotFoundError:
            pass  # removed before it was locked
        os.close(fd)
    raise OutputError(f"{path}: cannot create a temporary sibling that stays (removed 100 times)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` that killed roidask processes left.

    Only names roidask gives its temporary siblings are considered, and only
    those no live process holds the lock of are removed.

    Returns
    -------
    list of Path
        The removed siblings.
    """
    path = Path(os.path.abspath(path))  # "." included
    parent = path.parent
    if not parent.is_dir():
        return []
    pattern = _stale_pattern(path.name)
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return []
    for candidate in candidates:
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not _lock(fd):
                continue  # a live run is writing it
            _remove(candidate)
            removed.append(candidate)
        finally:
            os.close(fd)
    return removed


_UNLOCKED: set[str] = set()  # folders said to be unlockable (once per process)


#: How long a lock held by another process's probe (:func:`check_not_held`: released
#: at once) is waited for before a folder is said to be written by another command (s).
_PROBE_WAIT_S = 0.5


def _flock_exclusive(fd: int, *, wait: bool) -> None:
    """An exclusive ``flock`` on ``fd``; without ``wait``, BlockingIOError if another
    process holds one for longer than a probe does."""
    if wait:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + _PROBE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class FolderLock:
    """An exclusive lock on a folder that one roidask process writes at a time.

    Taken with ``flock`` on the folder itself (nothing is written): the kernel releases
    it when the process ends, however it ends, so a killed batch never leaves it held.
    A batch holds its batch folder's and its study store's for as long as it runs, a
    group level those of the batch folders and the study store it writes: a second
    command writing the same folder is refused
    with one line instead of rewriting what the first one publishes. A file system that
    cannot lock folders (NFS, where ``flock`` needs a file open for writing) is written
    without the lock, with a :class:`~roidask.exceptions.LockWarning`.

    With ``wait=True`` it waits for the lock instead (for short commits that other
    processes serialise on, as converts adding subjects to one store).

    Raises
    ------
    OutputError
        Another process holds the lock (``wait=False``).
    """

    def __init__(self, folder: str | os.PathLike, *, param: str, wait: bool = False):
        self.folder = Path(folder)
        self._fd = -1
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _flock_exclusive(fd, wait=wait)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{param} {self.folder}: another roidask command is writing it (a batch or a "
                "group level still running); wait for it to end, or choose another folder",
                param=param,
            ) from None
        except OSError as exc:  # no folder locks on this file system (some NFS mounts)
            os.close(fd)
            fd = -1
            if str(self.folder) not in _UNLOCKED:
                _UNLOCKED.add(str(self.folder))
                warnings.warn(
                    f"{param} {self.folder}: cannot be locked on this file system "
                    f"({exc.strerror or exc}); nothing stops another roidask command from "
                    "writing it meanwhile: run one at a time",
                    LockWarning,
                    stacklevel=2,
                )
        except BaseException:  # interrupted while waiting for the lock
            os.close(fd)
            raise
        self._fd = fd

    def check(self) -> None:
        """Nothing to check: the kernel never takes an ``flock`` from its holder (see
        :class:`~roidask.io.locations.RemoteLease`, which can lapse)."""

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def check_not_held(out: str | os.PathLike, *, param: str) -> None:
    """Refuse to write ``out`` inside a folder another roidask command holds
    (:class:`FolderLock`: a batch's folder or a group level's while they run), which
    would replace what it publishes there (``run --out BATCH/sub-01``).

    A probe of every folder above ``out``, not a lock: a shared ``flock`` taken and
    released at once (it fails only while an exclusive one is held; a command taking
    one meanwhile waits :data:`_PROBE_WAIT_S` for it). Never for the processes that
    command starts.

    Raises
    ------
    OutputError
        The folder holding ``out`` is locked by another process.
    """
    for parent in Path(os.path.abspath(out)).parents:  # BATCH/sub-01/x too
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # no such folder: the output's own checks say so
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{param} {out}: inside {parent}, which another roidask command is writing "
                "(a batch or a group level still running); wait for it to end, or choose "
                "another folder",
                param=param,
            ) from None
        except OSError:
            pass  # no folder locks on this file system (FolderLock warns where it matters)
        finally:
            os.close(fd)  # releases the probe


# -- ownership -------------------------------------------------------------------------------
#: What a marker records of each file it lists (name to value) as the folder is
#: committed: ``bytes`` (its size), ``mtime_ns`` (its modification time, ns; only for a
#: file last modified before the marker was created, see :func:`commit_record`),
#: ``crc32c`` (the CRC-32C of its content, 8 hex digits) and, in an ``s3://`` output,
#: ``etag`` (the ETag its PUT returned, :func:`roidask.io.locations.publish_folder`).
#: Older markers lack some (sizes only) or all of them.
RECORDS = ("bytes", "mtime_ns", "crc32c", "etag")


def read_marker(folder: Path) -> dict | None:
    """The ownership marker of a folder roidask wrote, or None.

    Folders written by roidask 0.1 carry no marker; their ``provenance.json``
    (with ``roidask_version`` and the list of ``outputs``) is accepted instead.
    What the marker recorded of each file when it was committed is kept as it is
    (:data:`RECORDS`: older markers record sizes only, or nothing).
    """
    for name, key in ((MARKER, "files"), ("provenance.json", "outputs")):
        try:
            record = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not isinstance(record.get(key), list):
            continue
        if name == MARKER and record.get("written_by") != "roidask":
            continue
        if name == "provenance.json" and "roidask_version" not in record:
            continue
        marker = {"kind": record.get("kind"), "files": [str(f) for f in record[key]]}
        for field in RECORDS:
            if isinstance(record.get(field), dict):
                marker[field] = record[field]
        return marker
    return None


def _files_of(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def is_roidask_folder(folder: Path, *, kind: str | None = None) -> bool:
    """True if ``folder`` carries roidask's marker (of ``kind``, if given)."""
    marker = read_marker(folder)
    return marker is not None and (kind is None or marker["kind"] in (kind, None))


_CRC_PIECE = 4 * 2**20  # bytes read at a time


#: The CRC-32Cs this process has read, by the file's identity and state (device, inode,
#: size, modification and change times: any write changes the change time, which no user
#: can set): a command checks a folder copied without its times more than once (its own
#: check, the batch's, each subject's completeness) and reads each file once.
_CRC_READ: dict[tuple[int, ...], str] = {}
#: At most this many are kept (then forgotten all at once).
_CRC_READ_MAX = 100_000


def file_crc32c(path: str | os.PathLike) -> str:
    """CRC-32C of a file's content, 8 hex digits (read in 4 MiB pieces: about 4 GB/s
    from the page cache, with the C implementation that zarr uses too); a file this
    process has read already, unchanged since (:data:`_CRC_READ`), is not read again."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if (known := _CRC_READ.get(key)) is not None:
            return known
        crc = 0
        while piece := fh.read(_CRC_PIECE):
            crc = google_crc32c.extend(crc, piece)
    if len(_CRC_READ) >= _CRC_READ_MAX:
        _CRC_READ.clear()
    _CRC_READ[key] = found = f"{crc:08x}"
    return found


def file_state(st: os.stat_result) -> dict[str, int]:
    """What :func:`changed_since_commit` compares of a file on disk now: its ``size``
    (bytes) and ``mtime_ns``, from its ``stat`` (nothing is read)."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def commit_record(folder: Path, names: Iterable[str], *, now_ns: int) -> dict[str, dict]:
    """What a marker records of the files ``names`` of ``folder`` (:data:`RECORDS`) as it
    commits them; each file is read once (its CRC-32C).

    Parameters
    ----------
    folder : Path
    names : iterable of str
        Paths relative to ``folder``.
    now_ns : int
        The file system's time now, ns (the marker's own modification time as it is
        created). A file modified at that time could be modified again within the same
        tick of the file system's clock and keep its time: its ``mtime_ns`` is not
        recorded, so a check always compares its content (as git does of a "racily
        clean" file).

    Returns
    -------
    dict
        ``bytes``, ``mtime_ns`` and ``crc32c``: each name to its value.
    """
    record: dict[str, dict] = {"bytes": {}, "mtime_ns": {}, "crc32c": {}}
    for name in names:
        st = os.stat(folder / name)
        record["bytes"][name] = st.st_size
        if st.st_mtime_ns < now_ns:
            record["mtime_ns"][name] = st.st_mtime_ns
        record["crc32c"][name] = file_crc32c(folder / name)
    return record


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _etag(value: Any) -> str:
    """An ETag as compared: without the quotes some servers leave out of listings."""
    return str(value).strip('"')


def changed_since_commit(
    marker: dict,
    found: dict[str, dict],
    *,
    crc32c: Callable[[str], str | None] | None = None,
) -> list[str]:
    """The files a marker recorded that are gone, or changed since roidask committed
    them: the one home of that comparison, on disk and in S3.

    A file of another size has changed. One of the same size: in S3, changed if its
    ETag (from the listing) is not the one its PUT returned; on disk, unchanged if it has
    the modification time recorded (nothing read, as rsync and make decide), else
    (copied without keeping times, or modified in the tick the folder was committed) if
    its content has the CRC-32C recorded (the file is read). What the marker does not
    record (older markers: sizes only) is not compared.

    Parameters
    ----------
    marker : dict
        A marker (:func:`read_marker`, :func:`roidask.io.locations.remote_marker`): its
        :data:`RECORDS`, of which ``bytes`` lists the files compared (none without it).
    found : dict
        Name to the file's state now: ``size`` (bytes) and ``mtime_ns`` on disk
        (:func:`file_state`), ``size`` and ``etag`` in S3; a name absent is gone.
    crc32c : callable, optional
        Name to the CRC-32C of the file's content now (:func:`file_crc32c`), None if it
        cannot be read (then changed); without it, contents are not compared.

    Returns
    -------
    list of str
        The names gone or changed, sorted.
    """
    sizes = marker.get("bytes")
    if not isinstance(sizes, dict):
        return []
    mtimes, digests, etags = (_mapping(marker.get(f)) for f in ("mtime_ns", "crc32c", "etag"))
    changed = []
    for name, size in sizes.items():
        now = found.get(name)
        if now is None or now.get("size") != size:
            changed.append(name)
        elif "etag" in now:  # an object: replaced, it has another ETag
            # (a listing may give no ETag: then the size alone is compared)
            if name in etags and now["etag"] and _etag(now["etag"]) != _etag(etags[name]):
                changed.append(name)
        elif name in mtimes and now.get("mtime_ns") == mtimes[name]:
            continue  # as committed (not read)
        elif name in digests and crc32c is not None and crc32c(name) != digests[name]:
            changed.append(name)
    return sorted(changed)


def crc32c_reader(folder: Path) -> Callable[[str], str | None]:
    """The ``crc32c`` argument of :func:`changed_since_commit` for a local ``folder``:
    ``name`` -> :func:`file_crc32c` of ``folder/name``, None if it cannot be read."""

    def crc(name: str) -> str | None:
        try:
            return file_crc32c(folder / name)
        except OSError:
            return None

    return crc


def _foreign_files(folder: Path, marker: dict) -> list[str]:
    """What in roidask's ``folder`` is not roidask's: files and folders (ending in ``/``)
    its marker does not list, and listed files changed since the marker recorded them
    (a user's edit: "(changed)", :func:`changed_since_commit`). One walk of the folder
    (a ``stat`` of each listed file; one read only where its size and modification time
    cannot tell)."""
    listed = set(marker["files"]) | {MARKER, "provenance.json"}
    # Markers that record sizes list files only: a folder where one of them was is a
    # user's (with whatever it holds). Older markers listed folders (results.zarr) whole.
    files_only = isinstance(marker.get("bytes"), dict)
    owned_dirs = (
        () if files_only else tuple(f"{f}/" for f in marker["files"] if (folder / f).is_dir())
    )
    holding = {str(Path(f).parent) for f in listed} | {d.rstrip("/") for d in owned_dirs}
    holding |= {str(p) for f in holding for p in Path(f).parents}
    foreign, states = [], {}
    for root, dirs, names in os.walk(folder):
        here = os.path.relpath(root, folder)
        for d in dirs:
            name = d if here == "." else f"{here}/{d}"
            if os.path.islink(os.path.join(root, d)):  # roidask writes no link: the user's
                foreign.append(name)
            elif name not in holding and not f"{name}/".startswith(owned_dirs):
                foreign.append(f"{name}/")
        for f in names:
            name = f if here == "." else f"{here}/{f}"
            if os.path.islink(os.path.join(root, f)):  # even where roidask's file was
                foreign.append(name)
            elif name in listed:
                with contextlib.suppress(OSError):
                    states[name] = file_state(os.stat(os.path.join(root, f)))
            elif not name.startswith(owned_dirs):
                foreign.append(name)
    changed = changed_since_commit(marker, states, crc32c=crc32c_reader(folder))
    foreign += [f"{name} (changed)" for name in changed if name in states]  # not gone ones
    return sorted(foreign)


class InputIndex:
    """A command's inputs, indexed once to check outputs against: an output must not be
    an input, contain one or lie inside one.

    A batch checks each of its thousands of subjects' folders against the inputs of
    every subject; the index makes each check a set lookup per level of the output's
    path, not a comparison with (and a ``resolve`` of) every input.

    Parameters
    ----------
    inputs : paths or ``s3://`` locations
        Local paths are compared resolved (symbolic links followed), URLs as written.
    """

    def __init__(self, inputs: Iterable[Any] = ()):
        self._inputs: dict[str, Any] = {}  # key -> the input as given
        self._holders: dict[str, Any] = {}  # a folder holding an input -> that input
        for item in inputs:
            key = self.key(item)
            self._inputs.setdefault(key, item)
            for folder in _folders_above(key):
                self._holders.setdefault(folder, item)

    @staticmethod
    def key(location: Any) -> str:
        """``location`` as compared: a URL as is, a local path resolved."""
        text = str(location)
        return text.rstrip("/") if "://" in text else str(Path(text).resolve())

    def overlap(self, out: Any) -> Any | None:
        """The input that ``out`` is, contains or lies inside (None if there is none)."""
        found = self.relation(out)
        return None if found is None else found[1]

    def relation(self, out: Any) -> tuple[str, Any] | None:
        """How ``out`` overlaps an input, and which: ``("is", input)``, ``("contains",
        input)`` or ``("is inside", input)``; None if it overlaps none."""
        key = self.key(out)
        found = (("is", self._inputs.get(key)), ("contains", self._holders.get(key)))
        for how, candidate in found:
            if candidate is not None:
                return how, candidate
        above = next((self._inputs[f] for f in _folders_above(key) if f in self._inputs), None)
        return None if above is None else ("is inside", above)


def check_not_input(out: Any, inputs: Iterable[Any] | InputIndex, *, param: str) -> None:
    """``out`` (a local path or an ``s3://`` location) must not be an input, contain one
    or lie inside one; OutputError naming ``param`` and the input otherwise."""
    index = inputs if isinstance(inputs, InputIndex) else InputIndex(inputs)
    found = index.relation(out)
    if found is not None:
        how, item = found
        raise OutputError(
            f"{param} {out}: {how} the input {item}; roidask never writes over its inputs, "
            "choose another output",
            param=param,
        )


def _folders_above(key: str) -> Iterator[str]:
    """``/a/b/c`` -> ``/a/b``, ``/a``; ``s3://bucket/a/b`` -> ``s3://bucket/a``, ``s3://bucket``."""
    top = key.find("://") + 3 if "://" in key else 0
    cut = key.rfind("/")
    while cut > top:
        key = key[:cut]
        yield key
        cut = key.rfind("/")


def check_parent(path: str | os.PathLike, *, param: str) -> Path:
    """The folder that will hold output ``path``: it must exist (roidask creates no
    folders the user did not ask for); returns it.

    Raises
    ------
    OutputError
        The parent folder is missing, or is not a folder.
    """
    parent = Path(path).parent
    if not parent.exists():
        raise OutputError(
            f"{param} {path}: its parent folder {parent} does not exist; create it first",
            param=param,
        )
    if not parent.is_dir():
        raise OutputError(f"{param} {path}: {parent} is not a folder", param=param)
    return parent


def _check_not_current_folder(out: Path, param: str) -> None:
    """A folder replaced whole (renamed aside, the new one renamed in) must not be where the
    user stands: the shell would be left in a deleted folder, the outputs seemingly gone."""
    if out.is_symlink() or not out.is_dir():
        return
    here, target = Path(os.getcwd()), out.resolve()  # getcwd: the resolved path already
    if here == target or target in here.parents:
        raise OutputError(
            f"{param} {out}: is {'' if here == target else 'above '}the current folder "
            f"({here}), which writing it would replace with a new folder; run from outside "
            f"it (e.g. cd {target.parent})",
            param=param,
        )


def check_destination(
    out: str | os.PathLike,
    *,
    param: str,
    inputs: Iterable[str | os.PathLike] | InputIndex = (),
    overwrite: bool = False,
    kind: str | None = None,
) -> Path:
    """Check that ``out`` may be (re)written, before any data is read.

    Parameters
    ----------
    out : path
        The folder (or file) the command will write.
    param : str
        Its parameter name, for messages (``"out"``).
    inputs : paths, or their InputIndex
        Every input of the command: ``out`` must not be one, contain one or be
        inside one.
    overwrite : bool
        Whether an existing ``out`` may be replaced.
    kind : str, optional
        The kind of output folder (``"subject-results"``, ``"group"``); an
        existing folder of another kind is refused.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    OutputError
        The parent folder is missing, not a folder, or not writable; ``out`` is an
        input or contains one; or ``out`` exists and roidask did not write it (or it
        holds files roidask did not write).
    OutputExistsError
        ``out`` is roidask's but ``overwrite`` is false.
    """
    out = Path(out)
    parent = check_parent(out, param=param)
    check_not_input(out, inputs, param=param)
    _check_writable(parent, out, param)
    if not out.exists() and not out.is_symlink():
        return out
    _check_not_current_folder(out, param)
    check_replaceable(out, param=param, overwrite=overwrite, kind=kind)
    return out


def check_replaceable(out: Path, *, param: str, overwrite: bool, kind: str | None) -> None:
    """Check that the existing ``out`` is a folder roidask wrote (of ``kind``), holding
    only its files as it wrote them, and that ``overwrite`` allows replacing it: the
    part of :func:`check_destination` that :class:`OutputFolder` checks again when it
    commits (``out`` may have been created or changed meanwhile).

    Raises
    ------
    OutputError, OutputExistsError
        As :func:`check_destination`.
    """
    if out.is_symlink() or not out.is_dir():
        raise OutputError(
            f"{param} {out}: exists and is not a folder roidask wrote; roidask only replaces "
            "its own outputs, choose another output",
            param=param,
        )
    marker = read_marker(out)
    if marker is None:
        raise OutputError(
            f"{param} {out}: exists and was not written by roidask (no {MARKER}); roidask "
            "only replaces its own outputs, choose another output",
            param=param,
        )
    if kind is not None and marker["kind"] not in (kind, None):
        raise OutputError(
            f"{param} {out}: is a roidask {marker['kind']} folder, not a {kind} folder; "
            "choose another output",
            param=param,
        )
    foreign = _foreign_files(out, marker)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise OutputError(
            f"{param} {out}: holds {len(foreign)} file(s) roidask did not write, or changed "
            f"since ({shown}); move them elsewhere or choose another output",
            param=param,
        )
    if not overwrite:
        raise OutputExistsError(
            f"{param} {out}: already exists; pass overwrite=True to replace it", param=param
        )


def _check_writable(parent: Path, out: Path, param: str) -> None:
    probe = temp_sibling(out)
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except PermissionError:
        raise OutputError(
            f"{param} {out}: cannot write into {parent} (permission denied)", param=param
        ) from None
    except OSError as exc:
        raise OutputError(
            f"{param} {out}: cannot write into {parent} ({exc.strerror or exc})", param=param
        ) from None
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):  # another command's clean-up took it
        probe.unlink()


# -- commits ---------------------------------------------------------------------------------
_renameat2: Any = None  # the libc function once looked up; False where missing


def _renameat2_func() -> Any:
    """libc's ``renameat2``, looked up once; False where there is none."""
    global _renameat2
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            func = libc.renameat2
        except (OSError, AttributeError):
            _renameat2 = False
            return False
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        func.argtypes += [ctypes.c_uint]
        func.restype = ctypes.c_int
        _renameat2 = func
    return _renameat2


def _rename2(a: Path, b: Path, flags: int) -> bool:
    """``renameat2(a, b, flags)``: True if done, False where unsupported (the kernel,
    the file system or the C library); an OSError otherwise."""
    func = _renameat2_func()
    if func is False:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b`` (Linux); False where unsupported."""
    return _rename2(a, b, _RENAME_EXCHANGE)


def rename_no_replace(a: Path, b: Path) -> None:
    """Rename ``a`` to ``b`` unless ``b`` exists (``renameat2(RENAME_NOREPLACE)``: one
    system call, so a ``b`` created by another process at the same moment is never
    replaced). Where that is unsupported: a file is linked to ``b`` (which fails if
    ``b`` exists) then unlinked; a folder is checked then renamed, which could replace
    at most an empty folder created in between.

    Raises
    ------
    FileExistsError
        ``b`` exists.
    """
    if _rename2(a, b, _RENAME_NOREPLACE):  # EEXIST: a FileExistsError
        return
    if b.exists() or b.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(b))
    if not a.is_dir():
        try:
            os.link(a, b)  # EEXIST: a FileExistsError
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links
            pass
        else:
            os.unlink(a)
            return
    try:
        os.rename(a, b)  # a folder onto a folder that is not empty fails
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(b)) from None
        raise


def swap_into_place(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is swapped out, then removed.

    With ``renameat2(RENAME_EXCHANGE)`` there is no moment when ``target``
    is missing; elsewhere the old ``target`` is renamed aside first. The old
    content ends under a temporary name that :func:`clean_stale` removes if this
    process dies before removing it.
    """
    if not target.exists() and not target.is_symlink():
        os.rename(new, target)
        return
    if _exchange(new, target):
        _remove(new)  # now holds the old content
        return
    old = temp_sibling(target, _OLD)
    os.rename(target, old)
    os.rename(new, target)
    _remove(old)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike,
    *,
    overwrite: bool = True,
    check: Callable[[], None] | None = None,
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    The caller writes the whole file to the yielded path; on an exception it is
    removed and ``path`` is left as it was. ``check()``, if given, is called just
    before the commit (``path`` may have been created or changed since the caller
    checked it; it raises to keep ``path`` as it is). Without ``overwrite``, a
    ``path`` that exists by then is never replaced (:class:`OutputExistsError`).
    """
    path = Path(path)
    tmp, fd = create_locked(path, folder=False, mode=0o644)
    try:
        yield tmp
        if check is not None:
            check()
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                rename_no_replace(tmp, path)
            except FileExistsError:
                raise OutputExistsError(
                    f"{path}: created by another process while this command wrote it; it is "
                    "left as it is, and this command's output is not kept"
                ) from None
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def scratch_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty, locked temporary sibling of ``path``; it is removed on exit.

    For temporary data that is never committed (the pass's voxel file): it is
    removed whether the block succeeds, fails or is interrupted, and if this
    process is killed :func:`clean_stale` on ``path`` removes it.
    """
    tmp, fd = create_locked(path, folder=False)
    try:
        yield tmp
    finally:
        _remove(tmp)  # before the lock is released: no other process removes it first
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def checked_again() -> Iterator[None]:
    """A destination checked again as an output is committed: its error says that it
    was created or changed while the command ran, and that it is left as it is."""
    try:
        yield
    except RoidaskError as exc:
        raise type(exc)(
            f"{exc} (it was created or changed while this command ran: it is left as it "
            "is, and this command's output is not kept)",
            param=exc.param,
        ) from None


class OutputFolder:
    """A folder built in a locked temporary sibling and committed in one rename.

    Use :func:`check_destination` first. ``with OutputFolder(out, kind=...) as tmp:``
    yields the temporary folder; leaving the block without an exception writes
    the ownership marker (listing every file) and swaps the folder into place;
    an exception removes the temporary folder and leaves ``out`` untouched.

    ``out`` is checked again when committing, as it may have been created or changed
    since the command checked it: a folder that is not there is moved in only if
    nothing appeared there meanwhile, and one that is there is replaced only if
    ``overwrite`` allows it and it is still roidask's, as it wrote it
    (:func:`check_replaceable`; a folder without roidask's marker, ``marker=False``,
    is checked by ``replaceable(out)`` instead, if given). Otherwise the output is
    discarded and ``out`` left as it is (an :class:`OutputError`).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        kind: str,
        info: dict | None = None,
        marker: bool = True,
        overwrite: bool = True,
        param: str = "out",
        replaceable: Callable[[Path], None] | None = None,
    ):
        self.out = Path(os.path.abspath(out))  # "." is renamed by its name in its parent
        self.kind = kind
        self.info = dict(info or {})
        self.marker = marker
        self.overwrite = overwrite
        self.param = param
        self.replaceable = replaceable
        self.tmp = temp_sibling(self.out)
        self._fd: int | None = None

    def open(self) -> Path:
        """Create and lock the temporary folder; return it."""
        try:
            self.tmp, self._fd = create_locked(self.out, folder=True)
        except OSError as exc:
            raise OutputError(
                f"{self.out}: cannot create a folder in {self.out.parent} ({exc.strerror or exc})"
            ) from None
        return self.tmp

    def commit(self, *, replace: bool = True) -> Path | None:
        """Write the marker (unless ``marker=False``: zarr stores mark themselves) and
        move the folder into place.

        With ``replace=False`` a folder another process created at ``out`` meanwhile is
        kept: nothing is moved, the temporary folder stays open, and None is returned.
        """
        if self.marker:
            files = sorted(_files_of(self.tmp))
            with open(self.tmp / MARKER, "w") as fh:
                now_ns = os.fstat(fh.fileno()).st_mtime_ns  # the file system's time now
                record = {
                    "written_by": "roidask",
                    "kind": self.kind,
                    "created_utc": _utc_now(),
                    **self.info,
                    "files": files,
                    # what each file held when committed: a user's edit, a truncated
                    # copy, are told from it
                    **commit_record(self.tmp, files, now_ns=now_ns),
                }
                fh.write(json.dumps(record, indent=2) + "\n")
        try:
            rename_no_replace(self.tmp, self.out)
        except FileExistsError:
            if not replace:
                return None
            self._check_still_replaceable()
            swap_into_place(self.tmp, self.out)
        self._release()
        return self.out

    def _check_still_replaceable(self) -> None:
        """:func:`check_replaceable` (or ``replaceable``) on ``out`` as it is now."""
        with checked_again():
            if self.replaceable is not None:
                self.replaceable(self.out)
            elif self.marker:
                check_replaceable(
                    self.out, param=self.param, overwrite=self.overwrite, kind=self.kind
                )

    def discard(self) -> None:
        """Remove the temporary folder (after a failure)."""
        _remove(self.tmp)
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:  # interrupted while committing: nothing half-done stays
                self.discard()
                raise
        else:
            self.discard()
