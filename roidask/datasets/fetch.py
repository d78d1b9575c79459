"""Download the real Haxby et al. (2001) subjects: resumable, verified, atomic.

The archives are the ones nilearn's ``fetch_haxby`` downloads, from the PyMVPA
data server (``http://data.pymvpa.org/datasets/haxby2001/``): one
``subjN-2010.01.14.tar.gz`` per subject (about 300 MB each), holding
``subjN/bold.nii.gz``, ``labels.txt``, the ventral-temporal and face/house
masks and ``anat.nii.gz`` (subject 6 has no anatomical image).

* Downloads go to ``<archive>.part`` and resume with an HTTP ``Range`` request
  when a partial file exists (a server that ignores ``Range`` restarts it).
* The size is checked against ``Content-Length`` and the archive against its
  known MD5; a mismatch deletes the partial file and raises
  :class:`~roidask.exceptions.DownloadError`.
* Archives are checked member by member before anything is extracted
  (absolute paths, ``..``, links leaving the archive and device files are
  refused), then extracted with ``tarfile``'s ``"data"`` filter into a
  temporary folder that is renamed into place: ``subjN/`` only ever appears
  complete.
* A subject folder that is already complete, or an archive already in the data
  folder (downloaded elsewhere), is used without any network access.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from roidask._progress import Progress
from roidask._validate import check_bool
from roidask.exceptions import DownloadError, InvalidParameterError

__all__ = [
    "HAXBY_MD5",
    "HAXBY_URL",
    "HaxbyDataset",
    "HaxbySubject",
    "default_data_dir",
    "fetch_haxby",
    "haxby_archive_name",
]

#: Base URL of the Haxby 2001 archives (the source nilearn uses).
HAXBY_URL = "http://data.pymvpa.org/datasets/haxby2001/"

#: MD5 of each subject archive, as published in the server's ``MD5SUMS`` file.
HAXBY_MD5: dict[str, str] = {
    "subj1-2010.01.14.tar.gz": "03e6865ec33bd5ebccdad3f13ef1d77f",
    "subj2-2010.01.14.tar.gz": "56902b0583c0329b8364cadc1abb3ed5",
    "subj3-2010.01.14.tar.gz": "fa6e21e52d161f108e5b45f9b6571d76",
    "subj4-2010.01.14.tar.gz": "5c0a0e45b562112ed4f15da9f27c7176",
    "subj5-2010.01.14.tar.gz": "2b983a6f4d16bad9053654e57c00483a",
    "subj6-2010.01.14.tar.gz": "2fecf6b76e781b349e616c594a74064e",
}

#: Record field -> file name inside ``subjN/`` (nilearn's names in comments).
_SUBJECT_FILES = {
    "bold": "bold.nii.gz",  # func
    "labels": "labels.txt",  # session_target
    "mask_vt": "mask4_vt.nii.gz",
    "mask_face": "mask8b_face_vt.nii.gz",
    "mask_house": "mask8b_house_vt.nii.gz",
    "mask_face_little": "mask8_face_vt.nii.gz",
    "mask_house_little": "mask8_house_vt.nii.gz",
    "anat": "anat.nii.gz",
}
_SUBJECTS = (1, 2, 3, 4, 5, 6)
_NO_ANAT = (6,)
_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class HaxbySubject:
    """Paths of one downloaded Haxby 2001 subject (nilearn's names as properties).

    Attributes
    ----------
    subject : int
        Subject number, 1 to 6.
    root : Path
        The ``subjN`` folder.
    bold : Path
        4D BOLD series (int16, 40x64x64x1452 for most subjects, TR 2.5 s).
    labels : Path
        ``labels.txt``: one row per volume, header ``labels chunks``.
    mask_vt : Path
        Ventral-temporal mask (``mask4_vt.nii.gz``).
    mask_face, mask_house : Path
        Face- and house-selective masks (``mask8b_*_vt.nii.gz``).
    mask_face_little, mask_house_little : Path
        Smaller versions of those (``mask8_*_vt.nii.gz``).
    anat : Path or None
        Anatomical image; None for subject 6, whose archive has none.
    """

    subject: int
    root: Path
    bold: Path
    labels: Path
    mask_vt: Path
    mask_face: Path
    mask_house: Path
    mask_face_little: Path
    mask_house_little: Path
    anat: Path | None

    @property
    def func(self) -> Path:
        """nilearn's name for :attr:`bold`."""
        return self.bold

    @property
    def session_target(self) -> Path:
        """nilearn's name for :attr:`labels`."""
        return self.labels


@dataclass(frozen=True)
class HaxbyDataset:
    """The fetched subjects, with nilearn ``Bunch``-like lists of paths.

    Attributes
    ----------
    data_dir : Path
        Folder holding the ``subjN`` folders.
    subjects : tuple of HaxbySubject
        One record per requested subject, in the requested order.
    """

    data_dir: Path
    subjects: tuple[HaxbySubject, ...]

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[HaxbySubject]:
        return iter(self.subjects)

    def __getitem__(self, index: int) -> HaxbySubject:
        return self.subjects[index]

    def _field(self, name: str) -> list:
        return [getattr(s, name) for s in self.subjects]

    @property
    def func(self) -> list[Path]:
        return self._field("bold")

    @property
    def session_target(self) -> list[Path]:
        return self._field("labels")

    @property
    def mask_vt(self) -> list[Path]:
        return self._field("mask_vt")

    @property
    def mask_face(self) -> list[Path]:
        return self._field("mask_face")

    @property
    def mask_house(self) -> list[Path]:
        return self._field("mask_house")

    @property
    def mask_face_little(self) -> list[Path]:
        return self._field("mask_face_little")

    @property
    def mask_house_little(self) -> list[Path]:
        return self._field("mask_house_little")

    @property
    def anat(self) -> list[Path | None]:
        return self._field("anat")


def haxby_archive_name(subject: int) -> str:
    """File name of a subject's archive on the server, e.g. ``subj2-2010.01.14.tar.gz``."""
    return f"subj{int(subject)}-2010.01.14.tar.gz"


def default_data_dir() -> Path:
    """``$ROIDASK_DATA/haxby2001``, or ``~/roidask_data/haxby2001`` when it is unset."""
    env = os.environ.get("ROIDASK_DATA")
    root = Path(env).expanduser() if env else Path.home() / "roidask_data"
    return root / "haxby2001"


def _expected_files(subject: int) -> dict[str, str]:
    return {k: v for k, v in _SUBJECT_FILES.items() if not (k == "anat" and subject in _NO_ANAT)}


def _record(subject: int, folder: Path) -> HaxbySubject:
    files = {k: folder / name for k, name in _expected_files(subject).items()}
    anat = files.pop("anat", None)
    return HaxbySubject(subject=subject, root=folder, anat=anat, **files)


def _check_subjects(subjects) -> tuple[int, ...]:
    if isinstance(subjects, int) and not isinstance(subjects, bool):
        subjects = (subjects,)
    if isinstance(subjects, str) or not isinstance(subjects, Sequence):
        raise InvalidParameterError(
            f"subjects: expected a subject number or a sequence of them (1 to 6), got "
            f"{subjects!r}",
            param="subjects",
        )
    out: list[int] = []
    for s in subjects:
        if isinstance(s, bool) or not isinstance(s, int) or s not in _SUBJECTS:
            raise InvalidParameterError(
                f"subjects: each subject must be one of {list(_SUBJECTS)}, got {s!r}",
                param="subjects",
            )
        if s not in out:
            out.append(s)
    return tuple(out)


def fetch_haxby(
    subjects: int | Sequence[int] = (2,),
    *,
    data_dir: str | os.PathLike | None = None,
    url: str | None = None,
    progress: bool = True,
    checksums: Mapping[str, str] | None = None,
    keep_archive: bool = False,
    retries: int = 3,
    timeout_s: float = 60.0,
) -> HaxbyDataset:
    """Download (if needed) and locate subjects of the Haxby et al. (2001) dataset.

    Parameters
    ----------
    subjects : int or sequence of int
        Subject number(s), 1 to 6 (a single number is one subject, not a count
        as in nilearn). Default: subject 2.
    data_dir : str or path-like, optional
        Folder holding (or receiving) the ``subjN/`` folders. Default
        ``$ROIDASK_DATA/haxby2001``, or ``~/roidask_data/haxby2001``. A complete
        ``subjN/`` folder or a ``subjN-2010.01.14.tar.gz`` archive already there
        is used without network access (e.g. files downloaded on another
        machine).
    url : str, optional
        Base URL of the archives; default :data:`HAXBY_URL`.
    progress : bool
        Show a download progress bar on stderr.
    checksums : mapping of str to str, optional
        MD5 (hex) per archive name; default :data:`HAXBY_MD5`.
    keep_archive : bool
        Keep the downloaded ``.tar.gz`` after extraction (deleted by default).
    retries : int
        How many times an interrupted download is resumed before giving up.
    timeout_s : float
        Network timeout in seconds for connecting and for each read.

    Returns
    -------
    HaxbyDataset
        ``subjects`` records with the paths of ``bold``, ``labels``
        (``session_target``), ``mask_vt``, the face/house masks and ``anat``,
        plus nilearn-like lists (``func``, ``session_target``, ``mask_vt``, ...).

    Raises
    ------
    DownloadError
        Offline or unreachable server, HTTP error, interrupted download
        (after ``retries`` resumptions; the partial file is kept), size or MD5
        mismatch (the partial file is deleted), unsafe or incomplete archive
        (nothing is extracted), or an incomplete ``subjN/`` folder.
    InvalidParameterError
        A bad subject number, or no checksum known for an archive.
    """
    subject_ids = _check_subjects(subjects)
    progress = check_bool(progress, "progress")
    keep_archive = check_bool(keep_archive, "keep_archive")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidParameterError(f"retries: expected an integer >= 0, got {retries!r}")
    if not (isinstance(timeout_s, int | float) and timeout_s > 0):
        raise InvalidParameterError(f"timeout_s: expected a positive number, got {timeout_s!r}")
    table = HAXBY_MD5 if checksums is None else checksums
    base = HAXBY_URL if url is None else str(url)
    if urllib.parse.urlsplit(base).scheme not in ("http", "https", "file"):
        raise InvalidParameterError(
            f"url: expected an http://, https:// or file:// address, got {base!r}", param="url"
        )
    if not base.endswith("/"):
        base += "/"
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise InvalidParameterError(
            f"data_dir {root}: is a file; expected a folder for the downloaded data",
            param="data_dir",
        )
    created = _missing_folders(root)  # removed again if the fetch fails leaving them empty
    try:
        return _fetch_into(root, subject_ids, table, base, progress, retries, timeout_s,
                           keep_archive)  # fmt: skip
    except BaseException:
        for folder in created:  # deepest first; only the empty ones this call created
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _fetch_into(root, subject_ids, table, base, progress, retries, timeout_s, keep_archive):
    """:func:`fetch_haxby` once its arguments are checked."""
    records = []
    for subject in subject_ids:
        folder = root / f"subj{subject}"
        if not folder.exists():
            name = haxby_archive_name(subject)
            md5 = table.get(name)
            if not md5:
                raise InvalidParameterError(
                    f"checksums: no MD5 known for {name}; expected an entry "
                    f"{{'{name}': '<32 hex digits>'}}, got keys {sorted(table)}"
                )
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidParameterError(
                    f"data_dir {root}: cannot create the folder ({exc.strerror or exc})",
                    param="data_dir",
                ) from None
            archive = root / name
            downloaded = False
            if archive.is_file():
                got = _md5(archive)
                if got != md5.lower():
                    raise DownloadError(
                        f"{archive}: MD5 is {got}, expected {md5.lower()} (corrupt or a "
                        "different file); delete it to download it again"
                    )
            else:
                _download(
                    base + name,
                    archive,
                    md5=md5.lower(),
                    progress=progress,
                    retries=retries,
                    timeout_s=float(timeout_s),
                )
                downloaded = True
            _extract(archive, root, subject)
            if downloaded and not keep_archive:
                archive.unlink()
        _check_complete(folder, subject)
        records.append(_record(subject, folder))
    return HaxbyDataset(data_dir=root, subjects=tuple(records))


def _check_complete(folder: Path, subject: int) -> None:
    missing = [n for n in _expected_files(subject).values() if not (folder / n).is_file()]
    if missing:
        raise DownloadError(
            f"{folder}: incomplete subject folder, missing {missing}; expected all of "
            f"{list(_expected_files(subject).values())}. Move or delete the folder and "
            "fetch again"
        )


# -- downloading -------------------------------------------------------------------------
class _Interrupted(Exception):
    """A transfer stopped early; the ``.part`` file can be resumed."""


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(4 * _READ_BYTES):
            h.update(block)
    return h.hexdigest()


def _offline_error(url: str, reason: object) -> DownloadError:
    name = posixpath.basename(url)
    return DownloadError(
        f"could not connect to {url} ({reason}). Is this machine offline? Download "
        f"{name} on a machine with network access and put it (or its extracted "
        "subjN/ folder) in a folder passed as data_dir= (--data-dir on the command "
        "line); pre-downloaded files are used without network access"
    )


def _download(
    url: str, dest: Path, *, md5: str, progress: bool, retries: int, timeout_s: float
) -> None:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed), then verify its MD5."""
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _transfer(url, part, progress=progress, timeout_s=timeout_s)
            break
        except _Interrupted as exc:
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: download interrupted ({exc}) after {attempt} attempt(s); "
                    f"{have} bytes are kept in {part}, run again to resume"
                ) from None
    got = _md5(part)
    if got != md5:
        size = part.stat().st_size
        part.unlink()
        raise DownloadError(
            f"{url}: MD5 of the downloaded file is {got}, expected {md5} ({size} bytes); "
            f"the partial file {part} was deleted, run again to download it afresh"
        )
    os.replace(part, dest)


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``Content-Range: bytes a-b/N`` (or ``*/N``)."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def _transfer(url: str, part: Path, *, progress: bool, timeout_s: float) -> None:
    """One HTTP request: append to (or restart) ``part``; raise _Interrupted if short."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "roidask", "Accept": "*/*"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            _, total = _content_range_total(exc.headers.get("Content-Range"))
            if total == have:
                return  # the partial file was already complete
            part.unlink()
            raise _Interrupted(
                f"server refused to resume at byte {have} (HTTP 416, file size {total}); "
                "restarting"
            ) from None
        raise DownloadError(f"{url}: HTTP error {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _offline_error(url, exc.reason) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Interrupted(f"{type(exc).__name__}: {exc}") from None

    with response:
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if response.status == 206:
            first, total = _content_range_total(response.headers.get("Content-Range"))
            if first != have:
                part.unlink()
                raise _Interrupted(f"server resumed at byte {first}, expected {have}; restarting")
            offset, mode = have, "ab"
        elif response.status == 200:
            # No Range sent, or the server ignored it: start again from byte 0.
            offset, mode, total = 0, "wb", None
        else:
            raise DownloadError(f"{url}: unexpected HTTP status {response.status}")
        if length is not None:
            total = offset + length
        bar = Progress(total or 0, posixpath.basename(url), enabled=progress)
        bar.update(offset)
        with bar, open(part, mode) as out:
            try:
                while block := response.read(_READ_BYTES):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                # OSError covers timeouts and connection resets.
                raise _Interrupted(f"{type(exc).__name__}: {exc}") from None
    size = part.stat().st_size
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(
            f"{url}: received {size} bytes, more than the {total} bytes the server announced "
            f"(Content-Length); the partial file {part} was deleted"
        )
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes")


# -- extracting --------------------------------------------------------------------------
def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` must not be extracted, or None if it is safe."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in path.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path leaves the extraction folder ('..')"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target):
            return f"link to an absolute path {target!r}"
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return f"link to {target!r} outside the extraction folder"
    elif not (member.isfile() or member.isdir()):
        return "device, FIFO or other special file"
    return None


def _extract(archive: Path, root: Path, subject: int) -> None:
    """Check every member, extract into a temporary folder, rename ``subjN`` into place."""
    folder = root / f"subj{subject}"
    tmp = Path(tempfile.mkdtemp(prefix=f".subj{subject}.extract-", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    reason = _unsafe_reason(member)
                    if reason is not None:
                        raise DownloadError(
                            f"{archive}: unsafe archive member {member.name!r} ({reason}); "
                            "refusing to extract anything. The file is kept for inspection; "
                            "delete it before fetching again"
                        )
                tar.extractall(tmp, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise DownloadError(
                f"{archive}: unsafe archive member ({exc}); refusing to extract anything"
            ) from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, DownloadError):
                raise
            raise DownloadError(
                f"{archive}: not a readable .tar.gz archive ({type(exc).__name__}: {exc}); "
                "delete it and fetch again"
            ) from None
        extracted = tmp / f"subj{subject}"
        missing = [n for n in _expected_files(subject).values() if not (extracted / n).is_file()]
        if missing:
            raise DownloadError(
                f"{archive}: archive lacks subj{subject}/{missing[0]}"
                + (f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else "")
                + f"; expected {list(_expected_files(subject).values())} under subj{subject}/"
            )
        try:
            os.rename(extracted, folder)
        except OSError as exc:
            raise DownloadError(
                f"{folder}: could not move the extracted subject into place ({exc})"
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
