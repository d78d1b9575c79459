"""roidask.io.locations against a moto S3 server on loopback: S3 paths, streams, ranged
reads, NIfTI sources read from objects bit-identical to local files, one-line errors."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import helpers.s3 as s3_helpers
import nibabel as nib
import numpy as np
import obstore
import pytest
from helpers.files import same_size_edit, write_bold
from obstore.store import S3Store

from roidask.exceptions import (
    CorruptFileError,
    InvalidParameterError,
    ObjectStoreError,
    OutputError,
    RoidaskTypeError,
    UnreadableFileError,
)
from roidask.io.labels import volume_labels
from roidask.io.locations import (
    ObjectStream,
    RangeFile,
    RemoteLease,
    S3Path,
    as_location,
    as_location_list,
    changed_files,
    check_input_file,
    check_remote_destination,
    list_files,
    location_arg,
    object_record,
    publish_folder,
    version_tag,
)
from roidask.io.nifti import NiftiSource, close_handles

s3_server = s3_helpers.s3_server
s3_bucket = s3_helpers.s3_bucket


def put(url: str, data: bytes) -> S3Path:
    loc = S3Path.from_url(url)
    obstore.put(S3Store(loc.bucket), loc.key, data)
    return loc


def test_urls_become_s3_paths_and_everything_else_paths():
    loc = as_location("s3://bucket/a/b/c.nii.gz")
    assert loc == S3Path("bucket", "a/b/c.nii.gz")
    assert str(loc) == "s3://bucket/a/b/c.nii.gz" and loc.name == "c.nii.gz"
    assert loc.parent / "d.txt" == S3Path("bucket", "a/b/d.txt")
    assert as_location("s3://bucket/a/b/") == S3Path("bucket", "a/b")  # a folder
    assert loc.relative_to(S3Path("bucket", "a")) == "b/c.nii.gz"
    assert as_location("rel/x.nii") == Path("rel/x.nii")
    assert location_arg("s3://b/k") == "s3://b/k" and location_arg("x") == Path("x")
    assert pickle.loads(pickle.dumps(loc)) == loc
    with pytest.raises(UnreadableFileError, match="needs a bucket"):
        as_location("s3:///key")


@pytest.mark.parametrize(
    ("url", "segment"),
    [
        ("s3://b/dbl//bold.nii.gz", "an empty segment ('//')"),
        ("s3://b//bold.nii.gz", "an empty segment ('//')"),
        ("s3://b/a/./bold.nii.gz", "a '.' segment"),
        ("s3://b/a/../bold.nii.gz", "a '..' segment"),
        ("s3://b/a/..", "a '..' segment"),
    ],
)
def test_a_url_whose_key_is_not_read_as_written_is_refused(url, segment):
    """S3 keys are not paths: ``a//b`` is another object than ``a/b`` (and ``.``, ``..``
    are no folders), so a URL that a path's normalisation would change is refused, naming
    the parameter (the command line's flag, before anything runs), never read as
    another key."""
    want = f"{segment}; S3 reads keys as written"
    with pytest.raises(InvalidParameterError, match=rf"^mask_img {re.escape(url)}: the key has "):
        as_location(url, "mask_img")
    with pytest.raises(InvalidParameterError, match=re.escape(want)):
        as_location(url)
    with pytest.raises(
        argparse.ArgumentTypeError, match=rf"^{re.escape(url)}: .*{re.escape(want)}"
    ):
        location_arg(url)
    with pytest.raises(InvalidParameterError, match=re.escape(want)):
        S3Path("b") / url.removeprefix("s3://b/")  # a manifest's relative path


def test_a_path_parameter_that_is_not_a_path_is_named():
    s3 = S3Path("bucket", "k.nii")
    assert as_location(s3, "img") is s3
    with pytest.raises(
        RoidaskTypeError, match=r"^store: expected a path \(str or os\.PathLike\), got NoneType$"
    ):
        as_location(None, "store")
    with pytest.raises(RoidaskTypeError, match=r"^out: expected a path .*got int$"):
        check_input_file(3, "out")


def test_one_path_or_a_list_of_them():
    s3 = S3Path("bucket", "k.nii")
    assert as_location_list("a.nii", "bold") == ["a.nii"]
    assert as_location_list((Path("a.nii"), s3), "bold") == [Path("a.nii"), s3]
    with pytest.raises(
        RoidaskTypeError,
        match=r"^labels: expected a path or a list of paths \(str or os\.PathLike\), got int$",
    ):
        as_location_list(5, "labels")
    with pytest.raises(RoidaskTypeError, match=r"^bold: expected a path .*got NoneType$"):
        as_location_list(["a.nii", None], "bold")


def test_listing_reading_and_ranges(s3_bucket):
    put(f"{s3_bucket}/d/a.bin", b"0123456789")
    put(f"{s3_bucket}/d/sub/b.bin", b"x")
    d = as_location(f"{s3_bucket}/d")
    assert d.is_dir() and not d.is_file() and d.exists()
    assert sorted(p.name for p in d.iterdir()) == ["a.bin", "sub"]
    assert list_files(d) == ["a.bin", "sub/b.bin"]
    a = d / "a.bin"
    assert a.is_file() and a.read_bytes() == b"0123456789"
    assert a.read_range(3, 4) == b"3456" and a.read_range(8, 10) == b"89"
    raw = RangeFile(a)
    raw.seek(-3, 2)
    assert raw.read(10) == b"789"
    assert not (d / "nope").exists()
    record = object_record(a)
    assert record["bytes"] == 10 and record["etag"] == version_tag(a)
    assert object_record(d)["bytes"] == 11


def test_gzip_stream_reads_pieces_members_and_detects_truncation(s3_bucket, rng):
    data = rng.integers(0, 255, 3 * 2**20, dtype=np.uint8).tobytes()
    two_members = gzip.compress(data[: 2**20]) + gzip.compress(data[2**20 :])
    loc = put(f"{s3_bucket}/x.gz", two_members)
    with ObjectStream(loc, gzip=True, piece_bytes=64 * 2**10) as stream:
        got = [stream.read(100_000) for _ in range(40)]
    assert b"".join(got) == data
    cut = put(f"{s3_bucket}/cut.gz", two_members[: len(two_members) // 2])
    with pytest.raises(EOFError, match="ended early"), ObjectStream(cut, gzip=True) as stream:
        stream.read()


def test_nifti_from_s3_reads_like_the_local_file(s3_bucket, tmp_path, haxby, monkeypatch):
    import roidask.io.nifti

    monkeypatch.setattr(roidask.io.nifti, "_WINDOW_BYTES", 0)  # behind the stream: ranges
    close_handles()
    for name, path in (("bold.nii.gz", haxby.bold), ("run.nii", None)):
        if path is None:
            path = write_bold(tmp_path / name, 30, shape=(5, 4, 3))
        local = NiftiSource.open(path)
        remote = NiftiSource.open(put(f"{s3_bucket}/{name}", Path(path).read_bytes()))
        assert (remote.shape, remote.offset, remote.raw_dtype) == (
            local.shape,
            local.offset,
            local.raw_dtype,
        )
        np.testing.assert_array_equal(remote.affine, local.affine)
        n = local.n_volumes
        # in order, then behind the stream (ranged reads), as dask may ask
        for start, stop in ((n // 2, n), (0, 7), (3, n // 2)):
            np.testing.assert_array_equal(remote.read(start, stop), local.read(start, stop))
        blocks = [b for _, _, b in remote.iter_blocks(11)]
        np.testing.assert_array_equal(np.concatenate(blocks, axis=3), local.read())
        again = pickle.loads(pickle.dumps(remote))
        assert again.path == remote.path
    close_handles()


def test_a_nifti_header_in_s3_is_read_with_small_ranged_gets(s3_bucket, tmp_path, monkeypatch):
    # an open-ended GET dropped after the header still brought megabytes of the object
    noise = np.random.default_rng(0).integers(-2000, 2000, (16, 16, 16, 300), dtype=np.int16)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(noise, np.eye(4)), path)
    assert path.stat().st_size > 2 * 2**20  # noise: hardly compressed
    url = put(f"{s3_bucket}/bold.nii.gz", path.read_bytes())
    got: list[int] = []
    real_range = S3Path.read_range
    monkeypatch.setattr(S3Path, "stream", lambda *a, **k: pytest.fail("open-ended GET"))
    monkeypatch.setattr(S3Path, "read_range", lambda self, start, length: (
        got.append(length) or real_range(self, start, length)))  # fmt: skip
    close_handles()
    source = NiftiSource.open(url)
    assert source.shape == (16, 16, 16, 300)
    assert 0 < sum(got) <= 4 * 64 * 2**10, got
    close_handles()


def test_nifti_in_s3_checked_before_any_voxel_is_read(s3_bucket, tmp_path):
    path = write_bold(tmp_path / "run.nii.gz", 20)
    whole = path.read_bytes()
    img = nib.load(path)
    short = gzip.compress(gzip.decompress(whole)[: 352 + img.dataobj.dtype.itemsize * 60])
    with pytest.raises(CorruptFileError, match="gzip stream holds"):
        NiftiSource.open(put(f"{s3_bucket}/short.nii.gz", short), param="bold")
    with pytest.raises(CorruptFileError, match="is empty"):
        check_input_file(put(f"{s3_bucket}/empty.nii", b""), "bold")
    with pytest.raises(CorruptFileError, match="not gzip-compressed"):
        NiftiSource.open(put(f"{s3_bucket}/plain.nii.gz", gzip.decompress(whole)))
    put(f"{s3_bucket}/folder/x.nii.gz", whole)
    with pytest.raises(UnreadableFileError, match="is a folder"):
        check_input_file(f"{s3_bucket}/folder", "bold")


def test_labels_from_s3(s3_bucket, haxby):
    local = volume_labels([haxby.labels], n_volumes_per_run=[1452], tr_s=2.5)
    url = put(f"{s3_bucket}/labels.txt", Path(haxby.labels).read_bytes())
    remote = volume_labels([str(url)], n_volumes_per_run=[1452], tr_s=2.5)
    assert local.equals(remote)


def test_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3_helpers.free_port()}")
    with pytest.raises(ObjectStoreError, match=r"^mask s3://b/m.nii: cannot reach the S3 end"):
        check_input_file("s3://b/m.nii", "mask")


def test_aws_s3_unreachable_is_named_as_such(s3_server, monkeypatch):
    """No AWS_ENDPOINT_URL: AWS's own endpoint is used (reached here through a proxy at a
    closed loopback port, so nothing leaves the machine); the line names AWS S3, not "the
    S3 endpoint the AWS S3 endpoint"."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{s3_helpers.free_port()}")
    with pytest.raises(ObjectStoreError) as info:
        check_input_file("s3://b/m.nii", "mask")
    assert str(info.value) == (
        "mask s3://b/m.nii: cannot reach AWS S3 (connection failed; no AWS_ENDPOINT_URL is "
        "set, so AWS's own endpoint was used); check the network, or set AWS_ENDPOINT_URL to "
        "your S3 server"
    )


def test_nifti_zarr_from_s3_reads_like_local(s3_bucket, tmp_path, haxby):
    from roidask.io import as_image, to_nifti

    local = to_nifti(as_image(haxby.bold), tmp_path / "bold.nii.zarr")
    store = S3Store.from_url(s3_bucket)
    for p in local.rglob("*"):
        if p.is_file():
            obstore.put(store, f"bold.nii.zarr/{p.relative_to(local).as_posix()}", p.read_bytes())
    remote = as_image(f"{s3_bucket}/bold.nii.zarr")
    want = as_image(local)
    np.testing.assert_array_equal(remote.values, want.values)
    assert remote.attrs["affine"] == want.attrs["affine"]


def test_credentials_and_region_from_the_shared_aws_files(s3_bucket, tmp_path, monkeypatch):
    """No keys in the environment: the profile's keys and region from ~/.aws-style files
    (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_PROFILE), as the AWS CLI reads them."""
    from roidask.io import locations

    url = f"{s3_bucket}/creds/a.bin"
    put(url, b"from the files")
    credentials, config = tmp_path / "credentials", tmp_path / "config"
    credentials.write_text(
        "[default]\naws_access_key_id = WRONG\naws_secret_access_key = WRONG\n\n"
        f"[lab]\naws_access_key_id = {s3_helpers.ACCESS_KEY_ID}\n"
        f"aws_secret_access_key = {s3_helpers.SECRET_ACCESS_KEY}\n"
    )
    config.write_text(
        f"[default]\nregion = eu-west-3\n\n[profile lab]\nregion = {s3_helpers.REGION}\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "lab")
    assert locations.aws_file_settings() == {
        "aws_access_key_id": s3_helpers.ACCESS_KEY_ID,
        "aws_secret_access_key": s3_helpers.SECRET_ACCESS_KEY,
        "region": s3_helpers.REGION,
    }
    loc = as_location(url)
    store = locations._new_store(loc.bucket, None)
    assert store.config["access_key_id"] == s3_helpers.ACCESS_KEY_ID
    assert store.config["region"] == s3_helpers.REGION
    assert loc.read_bytes() == b"from the files"
    monkeypatch.setenv("AWS_PROFILE", "default")
    assert locations.aws_file_settings()["region"] == "eu-west-3"
    assert locations._new_store(loc.bucket, None).config["access_key_id"] == "WRONG"


# -- leases: one writer of an s3:// output at a time ---------------------------------------
def test_a_lease_admits_one_command_at_a_time(s3_bucket):
    out = S3Path.from_url(f"{s3_bucket}/results/sub-01")
    first = RemoteLease(out, param="out")
    lease = S3Path.from_url(f"{s3_bucket}/results/.sub-01.roidask-lease")
    assert first.lease == lease and lease.is_file()
    assert not out.exists()  # beside the output, not in it
    for attempt in (lambda: RemoteLease(out, param="out"),
                    lambda: RemoteLease.probe(out, param="out")):  # fmt: skip
        with pytest.raises(OutputError) as exc:
            attempt()
        message = str(exc.value)
        assert message.startswith(f"out {out}: another roidask command is writing it (pid ")
        assert "\n" not in message and str(lease) in message
    first.release()
    assert not lease.exists()
    RemoteLease.probe(out, param="out")  # free
    with RemoteLease(out, param="out") as second:
        second.check()
    assert not lease.exists()


#: Short leases of the lapse tests: S3's Last-Modified has whole seconds, so a lease's age
#: reads up to 1 s more than it is (a 1 s lease could lapse as it is written).
SHORT_LEASE_S = 3.0


def _lease_record(**fields) -> bytes:
    record = {"written_by": "roidask", "kind": "lease", "host": "elsewhere", "pid": 1,
              "pid_scope": "another-machine", "lease_s": SHORT_LEASE_S}  # fmt: skip
    return json.dumps({**record, **fields}).encode()


def test_a_lease_not_renewed_lapses_and_its_holder_learns_it(s3_bucket, monkeypatch):
    out = S3Path.from_url(f"{s3_bucket}/out")
    lease = put(f"{s3_bucket}/.out.roidask-lease", _lease_record())  # another machine's
    with pytest.raises(OutputError, match="pid 1 on elsewhere"):
        RemoteLease(out, param="out")
    time.sleep(SHORT_LEASE_S + 1.2)  # not renewed for more than its lease_s
    taker = RemoteLease(out, param="out")
    assert json.loads(lease.read_bytes())["pid"] != 1
    taker.release()

    # a holder whose renewals stalled for longer than the lease is taken over, and fails
    monkeypatch.setattr(RemoteLease, "lease_s", SHORT_LEASE_S)
    stalled = RemoteLease(out, param="out")
    stalled._stop.set()  # its renewals stop (a stalled process)
    stalled._thread.join()
    with pytest.raises(OutputError, match="another roidask command"):
        RemoteLease(out, param="out")  # renewed less than lease_s ago
    time.sleep(SHORT_LEASE_S + 1.2)
    other = RemoteLease(out, param="out")
    stalled._stop.clear()
    renewal = threading.Thread(target=stalled._renew)
    renewal.start()  # resumes: its next renewal (after lease_s / 4) finds the lease another's
    time.sleep(SHORT_LEASE_S / 4 + 0.6)
    stalled._stop.set()
    renewal.join()
    with pytest.raises(OutputError, match=r"lost its lease .* run it again"):
        stalled.check()
    stalled.release()
    assert lease.is_file()  # the other's, kept
    other.release()
    assert not lease.exists()


def test_the_lease_of_a_killed_process_on_this_machine_is_taken_at_once(s3_bucket):
    out = f"{s3_bucket}/out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from roidask.io.locations import RemoteLease, S3Path\n"
         "RemoteLease(S3Path.from_url(sys.argv[1]), param='out'); print('held', flush=True)\n"
         "time.sleep(120)", out],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {holder.pid} on"):
            RemoteLease(S3Path.from_url(out), param="out")  # alive: refused
    finally:
        holder.kill()
        holder.wait()
    with RemoteLease(S3Path.from_url(out), param="out"):  # killed: no wait for the lapse
        pass


def test_uploads_to_one_prefix_take_turns(s3_bucket, tmp_path):
    dest = S3Path.from_url(f"{s3_bucket}/f")
    local = tmp_path / "f"
    local.mkdir()
    (local / "a.txt").write_text("a")
    (local / ".roidask.json").write_text(
        json.dumps({"written_by": "roidask", "kind": "k", "files": ["a.txt"]})
    )
    holder = RemoteLease(dest, param="out")  # another command's upload, in progress
    upload = threading.Thread(target=publish_folder, args=(local, dest))
    upload.start()
    time.sleep(1.5)
    assert upload.is_alive() and not dest.exists()  # waits: nothing put meanwhile
    holder.release()
    upload.join(timeout=30)
    assert not upload.is_alive()
    assert sorted(dest.list_objects()) == [".roidask.json", "a.txt"]


def test_another_commands_probe_object_is_not_an_object_of_the_prefix(s3_bucket):
    from roidask.io.locations import check_remote_destination

    # check_writable puts and deletes a probe: a command checking the prefix meanwhile
    # must neither find it foreign nor find the prefix not empty
    out = put(f"{s3_bucket}/out/.roidask-probe-123-0a1b2c3d", b"").parent
    assert not out.exists() and out.list_objects() == {} and list(out.iterdir()) == []
    assert check_remote_destination(out, param="out") == out
    # a probe a killed command left: removed by the next check
    keys = [m["path"] for page in obstore.list(S3Store(out.bucket)) for m in page]
    assert keys == []


def test_a_lease_knows_its_own_record(s3_bucket, monkeypatch):
    # the answer to a PUT lost and the PUT retried: the object there is this lease's
    import obstore.exceptions as obs_errors

    real = obstore.put

    def answer_lost(store, key, data, *args, mode=None, **kwargs):
        result = real(store, key, data, *args, mode=mode, **kwargs)
        if key.endswith(".roidask-lease") and mode is not None:
            kind = (
                obs_errors.AlreadyExistsError if mode == "create" else obs_errors.PreconditionError
            )
            raise kind("a retried request found the first one's object")
        return result

    monkeypatch.setattr(RemoteLease, "lease_s", 0.4)  # renewals every 0.1 s
    monkeypatch.setattr(obstore, "put", answer_lost)
    lease = RemoteLease(S3Path.from_url(f"{s3_bucket}/out"), param="out")  # not refused
    time.sleep(0.5)  # renewals answered so: still its own
    lease.check()
    monkeypatch.setattr(obstore, "put", real)
    lease.release()
    assert not lease.lease.exists()


def test_an_upload_asks_before_it_writes_once_it_holds_the_lease(s3_bucket, tmp_path):
    dest = S3Path.from_url(f"{s3_bucket}/f")
    local = tmp_path / "f"
    local.mkdir()
    (local / "a.txt").write_text("a")
    seen = []

    def no_longer_wanted():
        seen.append(S3Path.from_url(f"{s3_bucket}/.f.roidask-lease").is_file())
        raise RuntimeError("its batch is gone")

    with pytest.raises(RuntimeError, match="its batch is gone"):
        publish_folder(local, dest, before_commit=no_longer_wanted)
    assert seen == [True] and dest.list_objects() == {}
    assert not S3Path.from_url(f"{s3_bucket}/.f.roidask-lease").exists()


def test_a_store_without_conditional_writes_is_written_with_a_warning(s3_bucket, monkeypatch):
    from roidask.exceptions import LockWarning
    from roidask.io import locations

    real = obstore.put

    def no_conditions(store, key, data, *args, mode=None, **kwargs):
        if mode is not None:
            raise OSError(
                "Server returned non-2xx status code: 501 Not Implemented: If-None-Match"
            )
        return real(store, key, data, *args, **kwargs)

    monkeypatch.setattr(obstore, "put", no_conditions)
    monkeypatch.setattr(locations, "_UNLEASED", set())
    out = S3Path.from_url(f"{s3_bucket}/out")
    with pytest.warns(LockWarning, match=r"does not support conditional writes, so no lease"):
        with RemoteLease(out, param="out") as lease:
            lease.check()
    assert not S3Path.from_url(f"{s3_bucket}/.out.roidask-lease").exists()


# -- publishing an output: never a mix of the old and the new ------------------------------
def _output_folder(folder: Path, value: int, own: str) -> dict[str, bytes]:
    """A roidask-like output folder: a consolidated zarr store (two arrays and a nested
    group), a map, a file of its own name (``own``) and its marker; name -> bytes."""
    import zarr

    from roidask.io.store_read import ignore_consolidated_warning

    ignore_consolidated_warning()
    store = zarr.open_group(folder / "results.zarr", mode="w")
    for name in ("a", "b"):
        store.create_array(name, shape=(4,), chunks=(2,), dtype="i2")[:] = value
    store.create_group("g").create_array("c", shape=(2,), chunks=(1,), dtype="i2")[:] = value
    zarr.consolidate_metadata(str(folder / "results.zarr"))
    (folder / "map.nii.gz").write_bytes(f"map {value}".encode())
    (folder / own).write_text(own)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    marker = {"written_by": "roidask", "kind": "k", "files": files}
    (folder / ".roidask.json").write_text(json.dumps(marker))
    return {name: (folder / name).read_bytes() for name in [*files, ".roidask.json"]}


def _objects(dest: S3Path) -> dict[str, bytes]:
    return {name: (dest / name).read_bytes() for name in dest.list_objects()}


def test_publishing_deletes_the_old_output_first_and_zarr_metadata_follows_its_chunks(
    s3_bucket, tmp_path, monkeypatch
):
    """Over an old output: the pending marker; the old objects deleted (zarr's root
    metadata first), before any new one is put; the data; zarr metadata, deepest first,
    the store's root last; the marker."""
    dest = S3Path.from_url(f"{s3_bucket}/f")
    old = _output_folder(tmp_path / "old", 1, "old.tsv")
    publish_folder(tmp_path / "old", dest)
    new = _output_folder(tmp_path / "new", 2, "new.tsv")
    calls, real_put, real_delete, lock = [], obstore.put, obstore.delete, threading.Lock()

    def put(store, key, data, *args, **kwargs):
        if key.startswith("f/"):
            with lock:
                calls.append(("put", key[2:]))
        return real_put(store, key, data, *args, **kwargs)

    def delete(store, keys):
        if not isinstance(keys, str) and keys[0].startswith("f/"):
            calls.append(("delete", [k[2:] for k in keys]))
        return real_delete(store, keys)

    monkeypatch.setattr(obstore, "put", put)
    monkeypatch.setattr(obstore, "delete", delete)
    publish_folder(tmp_path / "new", dest)
    monkeypatch.undo()
    assert calls[0] == ("put", ".roidask.json")  # pending
    assert calls[1] == ("delete", calls[1][1])  # then the old output, whole
    assert sorted(calls[1][1]) == sorted(set(old) - {".roidask.json"})
    assert calls[1][1][0] == "results.zarr/zarr.json"
    puts = [key for op, key in calls[2:]]
    assert all(op == "put" for op, _ in calls[2:]) and puts[-1] == ".roidask.json"
    metadata = [k for k in puts if k.endswith("zarr.json")]
    first = puts.index(metadata[0])
    assert sorted(puts[:first]) == sorted(
        k for k in new if not k.endswith(("zarr.json", ".roidask.json"))
    )
    assert puts[first:-1] == metadata
    depths = [k.count("/") for k in metadata]
    assert depths == sorted(depths, reverse=True) and metadata[-1] == "results.zarr/zarr.json"
    assert _objects(dest) == new


_KILLED_UPLOAD = """
import os, signal, sys, threading
from pathlib import Path
import obstore
from roidask.io import locations
from roidask.io.locations import S3Path, publish_folder
locations._PUT_THREADS = 1  # the objects in the order they are submitted
local, url, log, k = Path(sys.argv[1]), S3Path.from_url(sys.argv[2]), sys.argv[3], int(sys.argv[4])
real, lock, done = obstore.put, threading.Lock(), []
def put(store, key, data, *args, **kwargs):  # SIGKILL after the k-th object of the output
    name = key.rpartition("/")[2]
    if not key.startswith(url.key + "/") or name.startswith((".roidask.json", ".roidask-")):
        return real(store, key, data, *args, **kwargs)
    with lock:  # one at a time: none in flight when killed
        with open(log, "a") as fh:
            fh.write(key[len(url.key) + 1:] + "\\n")
        result = real(store, key, data, *args, **kwargs)
        done.append(key)
        if len(done) == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
obstore.put = put
publish_folder(local, url)
"""


def test_an_overwrite_killed_mid_upload_leaves_no_object_of_the_old_output(s3_bucket, tmp_path):
    """SIGKILLed after 5 of the 8 data objects of an overwrite: every object there is one
    of the new output (the old one is gone), the prefix is marked incomplete, plain zarr
    opens neither the store nor an array whose chunks are there; the next upload (the lease
    of the killed process taken at once) writes it whole."""
    import xarray as xr
    import zarr

    from roidask.exceptions import IncompleteOutputError
    from roidask.io.locations import check_finished, incomplete_output, zarr_store

    dest = S3Path.from_url(f"{s3_bucket}/f")
    old = _output_folder(tmp_path / "old", 1, "old.tsv")
    publish_folder(tmp_path / "old", dest)
    new = _output_folder(tmp_path / "new", 2, "new.tsv")
    log = tmp_path / "put.log"
    killed = subprocess.run([sys.executable, "-c", _KILLED_UPLOAD, str(tmp_path / "new"),
                             dest.url, str(log), "5"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    put = log.read_text().split()
    there = _objects(dest)
    marker = json.loads(there.pop(".roidask.json"))
    assert marker["complete"] is False
    assert set(marker["files"]) == (set(old) | set(new)) - {".roidask.json"}
    assert len(put) == 5 and sorted(there) == sorted(put)  # none of the old output
    assert all(data == new[name] for name, data in there.items())
    assert "results.zarr/a/c/1" in there  # every chunk of array a, not its zarr.json
    with pytest.raises(Exception, match=r"[Nn]o group"):
        xr.open_zarr(zarr_store(dest / "results.zarr"))
    with pytest.raises(Exception, match=r"[Nn]o array"):
        zarr.open_array(zarr_store(dest / "results.zarr"), path="a", mode="r")
    assert incomplete_output(dest / "results.zarr") == dest
    assert incomplete_output(dest, folder=True) == dest
    with pytest.raises(IncompleteOutputError, match=f"source {dest}/results.zarr: incomplete"):
        check_finished(dest / "results.zarr", "source")
    for name in ("map.nii.gz", "new.tsv", "old.tsv"):  # put, put, deleted: said the same
        with pytest.raises(IncompleteOutputError, match=f"labels {dest}/{name}: incomplete"):
            check_input_file(dest / name, "labels")
    publish_folder(tmp_path / "new", dest)
    assert _objects(dest) == new
    assert incomplete_output(dest / "results.zarr") is None


def test_changed_files_on_disk_compare_contents_only_where_times_cannot_tell(tmp_path):
    """A same-size edit is a change; a copy that did not keep the times (``cp -r``) is
    not; a marker that records sizes only cannot tell a same-size edit."""
    from roidask._atomic import MARKER, OutputFolder

    past = time.time_ns() - 3600 * 10**9
    with OutputFolder(tmp_path / "out", kind="subject-results") as tmp:
        for name in ("rois.tsv", "tstat.nii.gz"):
            (tmp / name).write_bytes(f"{name} by roidask\n".encode())
            os.utime(tmp / name, ns=(past, past))
    out = tmp_path / "out"
    copy = shutil.copytree(out, tmp_path / "copy", copy_function=shutil.copy)
    assert changed_files(out) == [] and changed_files(copy) == []
    for folder in (out, copy):
        (folder / "tstat.nii.gz").write_bytes(
            same_size_edit((folder / "tstat.nii.gz").read_bytes())
        )
        assert changed_files(folder) == ["tstat.nii.gz"]
    (out / "rois.tsv").unlink()
    assert changed_files(out) == ["rois.tsv", "tstat.nii.gz"]
    record = json.loads((copy / MARKER).read_text())
    sizes_only = {k: v for k, v in record.items() if k not in ("mtime_ns", "crc32c")}
    (copy / MARKER).write_text(json.dumps(sizes_only))
    assert changed_files(copy) == []


def test_an_s3_output_records_the_etags_its_puts_returned(s3_bucket, tmp_path):
    """Published, a folder's marker records each object's ETag from its PUT (a file over
    16 MiB put in parts too), not the local times: a same-size object put since has
    another ETag in the listing, which tells it (no object read)."""
    from roidask._atomic import OutputFolder

    local = tmp_path / "out"
    with OutputFolder(local, kind="subject-results") as tmp:
        (tmp / "tstat.nii.gz").write_bytes(os.urandom(17 * 2**20))  # two parts
        (tmp / "rois.tsv").write_text("label\tvoxels\n1\t12\n")
    first = {n: (local / n).read_bytes() for n in ("tstat.nii.gz", "rois.tsv")}
    dest = S3Path.from_url(f"{s3_bucket}/out")
    publish_folder(local, dest)
    marker = json.loads((dest / ".roidask.json").read_bytes())
    listing = dest.list_objects()
    assert marker["etag"] == {n: listing[n]["e_tag"] for n in first}
    assert marker["etag"]["tstat.nii.gz"].endswith('-2"')  # the ETag of a multipart upload
    assert "mtime_ns" not in marker and set(marker["crc32c"]) == set(first)
    assert changed_files(dest) == []
    assert check_remote_destination(dest, param="out", overwrite=True) == dest
    put(f"{dest}/rois.tsv", same_size_edit(first["rois.tsv"]))
    assert changed_files(dest) == ["rois.tsv"]
    with pytest.raises(OutputError, match=r"or changed since \(rois.tsv \(changed\)\)"):
        check_remote_destination(dest, param="out", overwrite=True)
    put(f"{dest}/rois.tsv", first["rois.tsv"])  # the same bytes again: the same ETag (MD5)
    assert changed_files(dest) == []
    # a marker of an upload that recorded sizes only (before ETags were): as before
    (dest / ".roidask.json").write_bytes(
        json.dumps({k: v for k, v in marker.items() if k != "etag"}).encode()
    )
    put(f"{dest}/rois.tsv", same_size_edit(first["rois.tsv"]))
    assert changed_files(dest) == []
    assert check_remote_destination(dest, param="out", overwrite=True) == dest


def test_an_input_prefix_is_asked_once_and_again_once_this_process_uploads_it(
    s3_bucket, tmp_path, monkeypatch
):
    """The inputs of one prefix cost one GET of its marker, however often they are opened;
    an upload of that prefix by this process, cut short, is seen at once."""
    from roidask.exceptions import IncompleteOutputError
    from roidask.io.locations import left_incomplete

    dest = S3Path.from_url(f"{s3_bucket}/f")
    _output_folder(tmp_path / "old", 1, "old.tsv")
    publish_folder(tmp_path / "old", dest)
    asked, real_get, real_put = [], obstore.get, obstore.put

    def get(store, key, *args, **kwargs):
        asked.extend([key] if key.endswith(".roidask.json") else [])
        return real_get(store, key, *args, **kwargs)

    monkeypatch.setattr(obstore, "get", get)
    for name in ("map.nii.gz", "old.tsv", "map.nii.gz"):
        check_input_file(dest / name, "img")
    assert asked == ["f/.roidask.json"]

    def cut(store, key, data, *args, **kwargs):
        if key.startswith("f/") and not key.endswith(".roidask.json"):
            raise KeyboardInterrupt  # as Ctrl-C, before the first object of the output
        return real_put(store, key, data, *args, **kwargs)

    _output_folder(tmp_path / "new", 2, "new.tsv")
    monkeypatch.setattr(obstore, "put", cut)
    with pytest.raises(KeyboardInterrupt):
        publish_folder(tmp_path / "new", dest)
    monkeypatch.setattr(obstore, "put", real_put)
    assert dest in left_incomplete()  # what the interrupted command's last line names
    with pytest.raises(IncompleteOutputError, match=f"img {dest}/map.nii.gz: incomplete"):
        check_input_file(dest / "map.nii.gz", "img")  # deleted by the upload
    publish_folder(tmp_path / "new", dest)  # done: left incomplete no more
    check_input_file(dest / "new.tsv", "img")
    assert dest not in left_incomplete()


@pytest.mark.parametrize(
    ("role", "unsigned"),
    [(None, True),
     ({"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"},
      False),
     ({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}, False)],
)  # fmt: skip
def test_without_boto3_a_role_the_environment_names_goes_to_obstore_s_chain(
    monkeypatch, role, unsigned
):
    # an EKS web identity or an ECS task role, which obstore reads itself: unsigned
    # requests (for want of boto3's chain) were access denied on a private bucket
    from roidask.io import locations

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SKIP_SIGNATURE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setitem(sys.modules, "obstore.auth.boto3", None)  # as where it is not installed
    for name, value in (role or {}).items():
        monkeypatch.setenv(name, value)
    found = locations._find_credentials()
    assert ("skip_signature" in found.kwargs) is unsigned, found
