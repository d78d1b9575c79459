"""fetch_haxby against a loopback HTTP server: resume, verification, safe extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from roidask.datasets import HaxbyDataset, fetch_haxby
from roidask.datasets.fetch import HAXBY_MD5, HAXBY_URL, default_data_dir, haxby_archive_name
from roidask.exceptions import DownloadError, InvalidParameterError
from roidask.io import read_labels

ARCHIVE = haxby_archive_name(2)
SUBJECT_FILES = (
    "bold.nii.gz",
    "labels.txt",
    "mask4_vt.nii.gz",
    "mask8b_face_vt.nii.gz",
    "mask8b_house_vt.nii.gz",
    "mask8_face_vt.nii.gz",
    "mask8_house_vt.nii.gz",
    "anat.nii.gz",
)


# -- a fake Haxby archive ------------------------------------------------------------------
def _nifti_gz(data: np.ndarray) -> bytes:
    img = nib.Nifti1Image(data, np.diag([3.5, 3.75, 3.75, 1.0]))
    return gzip.compress(img.to_bytes(), mtime=0)


def _subject_members(subject: int = 2) -> dict[str, bytes]:
    rng = np.random.default_rng(subject)
    conditions = ["rest", "face", "house", "rest"] * 3
    labels = "labels chunks\n" + "".join(f"{c} {i // 4}\n" for i, c in enumerate(conditions))
    members = {
        f"subj{subject}/bold.nii.gz": _nifti_gz(
            rng.integers(0, 2000, (4, 5, 3, 12), dtype=np.int16)
        ),
        f"subj{subject}/labels.txt": labels.encode(),
        f"subj{subject}/anat.nii.gz": _nifti_gz(rng.integers(0, 500, (8, 10, 6), dtype=np.int16)),
    }
    for name in SUBJECT_FILES[2:7]:
        members[f"subj{subject}/{name}"] = _nifti_gz(
            (rng.random((4, 5, 3)) > 0.5).astype(np.uint8)
        )
    return members


def _tar_gz(
    files: dict[str, bytes], *, links: dict[str, tuple[bytes, str]] | None = None
) -> bytes:
    """A .tar.gz of ``files`` (name -> content) plus ``links`` (name -> (type, target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# -- a loopback server with Range support ----------------------------------------------------
@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, list[int]] = field(default_factory=dict)  # cut the next responses
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection; closing ends the body

    def log_message(self, *args):
        pass

    def do_GET(self):
        state: ServerState = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404, "not found")
            return
        start = 0
        if range_header and state.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cuts = state.drop_after.get(self.path)
        if cuts:
            payload = payload[: cuts.pop(0)]  # then the connection closes: a truncated body
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server(monkeypatch):
    """A threaded HTTP server on 127.0.0.1 (ephemeral port); yields (base URL, state)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/haxby2001/", httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def archive(server):
    """A good subject-2 archive served at the server; returns (bytes, checksums)."""
    _, state = server
    data = _tar_gz(_subject_members(2))
    state.files[f"/haxby2001/{ARCHIVE}"] = data
    return data, {ARCHIVE: _md5(data)}


def _leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []


# -- tests -----------------------------------------------------------------------------------
def test_fetch_downloads_verifies_and_extracts(tmp_path, server, archive, capsys, fake_terminal):
    url, state = server
    _, checksums = archive
    result = fetch_haxby(data_dir=tmp_path / "haxby", url=url, checksums=checksums)
    assert isinstance(result, HaxbyDataset) and len(result) == 1
    sub = result[0]
    assert sub.subject == 2 and sub.root == tmp_path / "haxby" / "subj2"
    for name in SUBJECT_FILES:
        assert (sub.root / name).is_file()
    assert sub.bold == sub.func == sub.root / "bold.nii.gz"
    assert sub.labels == sub.session_target == sub.root / "labels.txt"
    assert sub.mask_vt.name == "mask4_vt.nii.gz"
    assert sub.mask_face.name == "mask8b_face_vt.nii.gz"
    assert sub.mask_house_little.name == "mask8_house_vt.nii.gz"
    assert sub.anat.name == "anat.nii.gz"
    assert result.func == [sub.bold] and result.session_target == [sub.labels]
    assert nib.load(sub.bold).shape == (4, 5, 3, 12)
    assert list(read_labels(sub.labels)["condition"][:4]) == ["rest", "face", "house", "rest"]
    # Only the subject folder is left: no archive, .part or temporary folder.
    assert _leftovers(tmp_path / "haxby") == ["subj2"]
    assert state.requests == [(f"/haxby2001/{ARCHIVE}", None)]
    assert ARCHIVE in capsys.readouterr().err  # the progress bar

    # A second call finds the complete folder and makes no request.
    again = fetch_haxby(2, data_dir=tmp_path / "haxby", url=url, checksums=checksums)
    assert again[0] == sub
    assert len(state.requests) == 1


def test_truncated_download_is_resumed_with_range(tmp_path, server, archive):
    url, state = server
    data, checksums = archive
    state.drop_after[f"/haxby2001/{ARCHIVE}"] = [1000]
    data_dir = tmp_path / "haxby"
    with pytest.raises(DownloadError, match=r"interrupted.*run again to resume"):
        fetch_haxby(data_dir=data_dir, url=url, checksums=checksums, retries=0, progress=False)
    part = data_dir / f"{ARCHIVE}.part"
    assert part.read_bytes() == data[:1000]
    assert not (data_dir / "subj2").exists()

    result = fetch_haxby(data_dir=data_dir, url=url, checksums=checksums, progress=False)
    assert state.requests[-1] == (f"/haxby2001/{ARCHIVE}", "bytes=1000-")
    assert result[0].bold.is_file()
    assert _leftovers(data_dir) == ["subj2"]


def test_interrupted_download_resumes_within_one_call(tmp_path, server, archive):
    url, state = server
    _, checksums = archive
    state.drop_after[f"/haxby2001/{ARCHIVE}"] = [700, 900]
    result = fetch_haxby(data_dir=tmp_path, url=url, checksums=checksums, progress=False)
    assert [r for _, r in state.requests] == [None, "bytes=700-", "bytes=1600-"]
    assert result[0].labels.is_file()


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, archive):
    url, state = server
    data, checksums = archive
    state.honour_range = False
    (tmp_path / f"{ARCHIVE}.part").write_bytes(data[:500])
    result = fetch_haxby(data_dir=tmp_path, url=url, checksums=checksums, progress=False)
    assert state.requests == [(f"/haxby2001/{ARCHIVE}", "bytes=500-")]
    assert result[0].bold.is_file()


def test_complete_partial_file_is_not_downloaded_again(tmp_path, server, archive):
    url, state = server
    data, checksums = archive
    (tmp_path / f"{ARCHIVE}.part").write_bytes(data)  # e.g. killed before verification
    result = fetch_haxby(data_dir=tmp_path, url=url, checksums=checksums, progress=False)
    assert state.requests == [(f"/haxby2001/{ARCHIVE}", f"bytes={len(data)}-")]
    assert result[0].bold.is_file()


def test_checksum_mismatch_deletes_partial_file(tmp_path, server, archive):
    url, _ = server
    with pytest.raises(
        DownloadError, match=r"MD5 of the downloaded file is [0-9a-f]{32}, expected"
    ):
        fetch_haxby(data_dir=tmp_path, url=url, checksums={ARCHIVE: "0" * 32}, progress=False)
    assert _leftovers(tmp_path) == []


def test_corrupt_pre_downloaded_archive_is_reported_not_deleted(tmp_path, server, archive):
    url, state = server
    _, checksums = archive
    (tmp_path / ARCHIVE).write_bytes(b"not the archive")
    with pytest.raises(DownloadError, match=rf"{ARCHIVE}: MD5 is .* delete it"):
        fetch_haxby(data_dir=tmp_path, url=url, checksums=checksums, progress=False)
    assert (tmp_path / ARCHIVE).read_bytes() == b"not the archive"
    assert state.requests == []


def test_pre_downloaded_archive_is_used_offline(tmp_path, archive, closed_port_url):
    data, checksums = archive
    (tmp_path / ARCHIVE).write_bytes(data)
    result = fetch_haxby(data_dir=tmp_path, url=closed_port_url, checksums=checksums)
    assert result[0].bold.is_file()
    assert (tmp_path / ARCHIVE).is_file()  # the user's file is kept


UNSAFE = {
    "parent": ({"../evil.txt": b"x"}, None, r"'\.\./evil\.txt' \(path leaves"),
    "nested parent": ({"subj2/../../evil.txt": b"x"}, None, r"path leaves"),
    "absolute": ({"/tmp/roidask-evil.txt": b"x"}, None, r"absolute path"),
    "absolute symlink": ({}, {"subj2/link": (tarfile.SYMTYPE, "/etc/passwd")}, "absolute"),
    "symlink outside": (
        {},
        {"subj2/link": (tarfile.SYMTYPE, "../../outside.txt")},
        "outside the extraction folder",
    ),
    "hardlink outside": (
        {},
        {"subj2/hard": (tarfile.LNKTYPE, "../outside.txt")},
        "outside the extraction folder",
    ),
    "device": ({}, {"subj2/dev": (tarfile.CHRTYPE, "")}, "device"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_is_refused_and_nothing_extracted(tmp_path, server, case):
    url, state = server
    extra_files, links, match = UNSAFE[case]
    # The unsafe member comes last: a naive extractor would have written the rest.
    data = _tar_gz({**_subject_members(2), **extra_files}, links=links)
    state.files[f"/haxby2001/{ARCHIVE}"] = data
    data_dir = tmp_path / "data" / "haxby"
    with pytest.raises(DownloadError, match=match) as info:
        fetch_haxby(data_dir=data_dir, url=url, checksums={ARCHIVE: _md5(data)}, progress=False)
    assert "refusing to extract anything" in str(info.value)
    assert not (data_dir / "subj2").exists()
    assert _leftovers(data_dir) == [ARCHIVE]  # kept for inspection, nothing else
    assert not (tmp_path / "data" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/roidask-evil.txt").exists()


def test_archive_without_the_subject_files_is_refused(tmp_path, server):
    url, state = server
    members = _subject_members(2)
    del members["subj2/mask4_vt.nii.gz"]
    data = _tar_gz(members)
    state.files[f"/haxby2001/{ARCHIVE}"] = data
    with pytest.raises(DownloadError, match=r"archive lacks subj2/mask4_vt\.nii\.gz"):
        fetch_haxby(data_dir=tmp_path, url=url, checksums={ARCHIVE: _md5(data)}, progress=False)
    assert _leftovers(tmp_path) == [ARCHIVE]


def test_not_an_archive_is_reported(tmp_path, server):
    url, state = server
    data = b"<html>a proxy error page</html>"
    state.files[f"/haxby2001/{ARCHIVE}"] = data
    with pytest.raises(DownloadError, match=r"not a readable \.tar\.gz archive"):
        fetch_haxby(data_dir=tmp_path, url=url, checksums={ARCHIVE: _md5(data)}, progress=False)
    assert not (tmp_path / "subj2").exists()


@pytest.fixture
def closed_port_url(monkeypatch):
    """A loopback URL on a port nothing listens on (connection refused)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/haxby2001/"


def test_offline_gives_a_clear_error(tmp_path, closed_port_url):
    with pytest.raises(DownloadError) as info:
        fetch_haxby(
            data_dir=tmp_path, url=closed_port_url, checksums={ARCHIVE: "0" * 32}, progress=False
        )
    message = str(info.value)
    assert f"could not connect to {closed_port_url}{ARCHIVE}" in message
    assert "refused" in message.lower()
    assert "--data-dir" in message and "data_dir=" in message
    assert _leftovers(tmp_path) == []


def test_http_error_names_the_url(tmp_path, server):
    url, _ = server  # nothing served: 404
    with pytest.raises(DownloadError, match=rf"{re.escape(url + ARCHIVE)}: HTTP error 404"):
        fetch_haxby(data_dir=tmp_path, url=url, checksums={ARCHIVE: "0" * 32}, progress=False)
    assert _leftovers(tmp_path) == []


def test_incomplete_subject_folder_is_reported(tmp_path, server):
    url, state = server
    (tmp_path / "subj2").mkdir()
    (tmp_path / "subj2" / "bold.nii.gz").write_bytes(b"")
    with pytest.raises(DownloadError, match=r"subj2: incomplete subject folder, missing"):
        fetch_haxby(data_dir=tmp_path, url=url, progress=False)
    assert state.requests == []


def test_subject_6_has_no_anat(tmp_path, server):
    url, state = server
    members = {
        k.replace("subj2", "subj6"): v
        for k, v in _subject_members(2).items()
        if not k.endswith("anat.nii.gz")
    }
    data = _tar_gz(members)
    state.files[f"/haxby2001/{haxby_archive_name(6)}"] = data
    result = fetch_haxby(
        [6], data_dir=tmp_path, url=url, checksums={haxby_archive_name(6): _md5(data)}
    )
    assert result[0].anat is None and result.anat == [None]
    assert result[0].bold.is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subjects": [7]}, r"subjects: each subject must be one of \[1, 2, 3, 4, 5, 6\], got 7"),
        ({"subjects": "2"}, "subjects: expected a subject number"),
        ({"subjects": [2], "checksums": {}}, rf"checksums: no MD5 known for {ARCHIVE}"),
        ({"retries": -1}, "retries"),
        ({"url": "not a url"}, r"url: expected an http://, https:// or file:// address, got 'not"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    kwargs = {"url": "http://127.0.0.1:9/", **kwargs}
    with pytest.raises(InvalidParameterError, match=match):
        fetch_haxby(data_dir=tmp_path, progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("ROIDASK_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path / "haxby2001"
    monkeypatch.delenv("ROIDASK_DATA")
    assert default_data_dir() == Path.home() / "roidask_data" / "haxby2001"
    assert HAXBY_URL == "http://data.pymvpa.org/datasets/haxby2001/"
    assert set(HAXBY_MD5) == {haxby_archive_name(i) for i in range(1, 7)}
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in HAXBY_MD5.values())
    assert fetch_haxby([], data_dir=tmp_path).subjects == ()


def test_cli_fetch_haxby(tmp_path, server, archive, monkeypatch, capsys):
    from roidask import cli
    from roidask.datasets import fetch as fetch_module

    url, _ = server
    _, checksums = archive
    monkeypatch.setattr(fetch_module, "HAXBY_MD5", {**fetch_module.HAXBY_MD5, **checksums})
    rc = cli.main(
        [
            "fetch",
            "haxby",
            "--subjects",
            "2",
            "--data-dir",
            str(tmp_path / "h"),
            "--url",
            url,
            "--quiet",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"bold {tmp_path / 'h' / 'subj2' / 'bold.nii.gz'}" in out
    assert (tmp_path / "h" / "subj2" / "labels.txt").is_file()


def test_cli_fetch_offline_is_one_line(tmp_path, closed_port_url, capsys):
    from roidask import cli

    rc = cli.main(
        ["fetch", "haxby", "--data-dir", str(tmp_path), "--url", closed_port_url, "--quiet"]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roidask: error:") and "could not connect" in err[0]


def test_cli_fetch_leaves_no_folder_it_created_and_refuses_a_file(
    tmp_path, closed_port_url, capsys
):
    """A failed fetch removes the (empty) folders it created; a file as --data-dir is one line."""
    from roidask import cli

    target = tmp_path / "new" / "data"
    argv = ["fetch", "haxby", "--url", closed_port_url, "--quiet"]
    assert cli.main([*argv, "--data-dir", str(target)]) == 2
    assert "could not connect" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # new/ and new/data/ removed again
    mine = tmp_path / "mine"
    mine.mkdir()  # the user's folder stays, even empty
    assert cli.main([*argv, "--data-dir", str(mine / "data")]) == 2
    assert list(tmp_path.iterdir()) == [mine] and list(mine.iterdir()) == []
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert cli.main([*argv, "--data-dir", str(notes)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"roidask: error: --data-dir {notes}: is a file; expected a folder for the downloaded data"
    )
    assert cli.main([*argv, "--data-dir", str(notes / "data")]) == 2  # under a file
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"roidask: error: --data-dir {notes / 'data'}: cannot create the folder (Not a directory)"
    )
    assert notes.read_text() == "mine"
