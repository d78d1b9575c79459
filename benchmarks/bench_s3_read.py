"""Reading a seed-sized subject from S3: zarr on obstore vs zarr on fsspec/s3fs; .nii.gz streams.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_s3_read.py [--rounds 5] [--sections zarr,nifti]

Data: the seed-shaped synthetic subject of ``bench_pipeline.py`` (40x64x64x1452 int16,
generated once into ``benchmarks/data/``) and its store made by ``roidask.io.convert``
(chunks of whole volumes, blosc lz4 bitshuffle), both uploaded to a local moto S3
server on 127.0.0.1 (``tests/helpers/s3.py``; credentials and endpoint from the
standard AWS variables only). moto is a Python server on the same 2 cores, so the
absolute figures are a floor set by moto, not S3; the client-to-client ratios and
the memory figures are what this measures.

``zarr``   ``bold`` read by zarr-python 3 through ``zarr.storage.ObjectStore`` (obstore)
           vs ``zarr.storage.FsspecStore`` (s3fs) vs a ``LocalStore`` of the same files:
           the whole array in one ``arr[...]`` (zarr fetches chunks concurrently), and
           the chunks one by one in time order (as roidask's pass reads them). Each
           round opens a fresh store (no client cache carried over).
``nifti``  ``bold.nii.gz`` streamed and decompressed with isal (``igzip``) without
           downloading it whole: s3fs file object (readahead cache) into ``IGzipFile``;
           obstore ``open_reader`` (buffered ranged GETs) into ``IGzipFile``; obstore
           ``get(...).stream()`` (one GET) into an ``isal_zlib`` decompressor; the local
           file as a baseline. Each case runs in a fresh process: wall time, throughput
           of compressed and decompressed bytes, and peak RSS above the process's
           RSS after imports (``ru_maxrss``), next to the object's size.
           Two more cases are roidask's own reads of the ``s3://`` URL
           (:mod:`roidask.io.locations`): ``roidask-blocks`` reads blocks of
           ``BLOCK_VOLUMES`` volumes in time order through ``NiftiSource.read`` (the
           cached handle the pass reads through: one GET stream decoded forward),
           ``roidask-iter`` through ``NiftiSource.iter_blocks`` (what ``convert`` streams).

Small-scale check (the bundled Haxby slice instead of the seed-sized run; nifti only)::

    .venv/bin/python benchmarks/bench_s3_read.py --sections nifti --rounds 1 \
        --nifti roidask/datasets/data/haxby2001-slice/bold.nii.gz
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TESTS = HERE.parent / "tests"
STORE = DATA / "s3-read.zarr"
SUBJECT = "sub-01"
READ_BYTES = 8 * 2**20
BLOCK_VOLUMES = 64


def prepare() -> tuple[Path, Path]:
    """The synthetic subject's .nii.gz and its converted store (made once)."""
    sys.path.insert(0, str(HERE))
    from bench_pipeline import subject

    from roidask.io import convert

    subj = subject()
    if not (STORE / "zarr.json").exists():
        print("converting to a store ...", file=sys.stderr)
        convert(subj / "bold.nii.gz", labels=subj / "labels.txt", out=STORE, subject=SUBJECT)
    return subj / "bold.nii.gz", STORE


def upload(bucket_url: str, nifti: Path, store: Path) -> int:
    """Put the store's files under ``store.zarr/`` and the run as ``bold.nii.gz``."""
    import obstore
    from obstore.store import S3Store

    s3 = S3Store.from_url(bucket_url)
    files = [p for p in store.rglob("*") if p.is_file()] if store is not None else []

    def put(p: Path) -> int:
        obstore.put(s3, f"store.zarr/{p.relative_to(store).as_posix()}", p.read_bytes())
        return p.stat().st_size

    with ThreadPoolExecutor(8) as pool:
        total = sum(pool.map(put, files))
    with open(nifti, "rb") as fh:
        obstore.put(s3, "bold.nii.gz", fh, chunk_size=16 * 2**20)
    return total


# -- zarr ----------------------------------------------------------------------------
def zarr_store(kind: str, bucket_url: str):
    import zarr.storage

    url = f"{bucket_url}/store.zarr"
    if kind == "obstore":
        from obstore.store import S3Store

        return zarr.storage.ObjectStore(S3Store.from_url(url), read_only=True)
    if kind == "fsspec":
        return zarr.storage.FsspecStore.from_url(
            url, read_only=True, storage_options={"skip_instance_cache": True}
        )
    return zarr.storage.LocalStore(STORE, read_only=True)


def read_whole(kind: str, bucket_url: str) -> float:
    import zarr

    start = time.perf_counter()
    arr = zarr.open_array(zarr_store(kind, bucket_url), path=f"{SUBJECT}/bold", mode="r")
    data = arr[...]
    elapsed = time.perf_counter() - start
    assert data.shape == arr.shape
    return elapsed


def read_chunks(kind: str, bucket_url: str) -> float:
    import zarr

    start = time.perf_counter()
    arr = zarr.open_array(zarr_store(kind, bucket_url), path=f"{SUBJECT}/bold", mode="r")
    step = arr.chunks[3]
    total = 0
    for t0 in range(0, arr.shape[3], step):
        total += arr[..., t0 : t0 + step].nbytes
    elapsed = time.perf_counter() - start
    assert total == arr.nbytes
    return elapsed


def section_zarr(bucket_url: str, rounds: int) -> None:
    import zarr

    arr = zarr.open_array(zarr_store("local", bucket_url), path=f"{SUBJECT}/bold", mode="r")
    raw_mb = arr.nbytes / 2**20
    stored_mb = sum(p.stat().st_size for p in (STORE / SUBJECT / "bold").rglob("*")) / 2**20
    kinds = ("obstore", "fsspec", "local")
    results = {(k, how): [] for k in kinds for how in ("whole", "chunks")}
    for r in range(rounds):  # interleaved, so drift of the shared machine hits all alike
        for k in kinds:
            order = ("whole", "chunks") if r % 2 == 0 else ("chunks", "whole")
            for how in order:
                read = read_whole if how == "whole" else read_chunks
                results[(k, how)].append(read(k, bucket_url))
    print(
        f"## zarr `bold` {arr.shape} {arr.dtype}, chunks {arr.chunks} "
        f"({raw_mb:.0f} MB raw, {stored_mb:.0f} MB stored); median of {rounds} rounds\n"
    )
    print("| store | read | s | range s | MB/s stored | MB/s raw |")
    print("|---|---|---|---|---|---|")
    labels = {
        "obstore": "zarr ObjectStore (obstore), S3",
        "fsspec": "zarr FsspecStore (s3fs), S3",
        "local": "zarr LocalStore, local disk",
    }
    for k in kinds:
        for how, text in (("whole", "whole array"), ("chunks", "chunk by chunk, in time order")):
            t = results[(k, how)]
            med = statistics.median(t)
            print(
                f"| {labels[k]} | {text} | {med:.2f} | {min(t):.2f}-{max(t):.2f} | "
                f"{stored_mb / med:.0f} | {raw_mb / med:.0f} |"
            )
    print(flush=True)


# -- nifti ---------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in kB (``ru_maxrss`` survives fork + exec
    from the big parent process, ``VmHWM`` starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class _RawReader(io.RawIOBase):
    """``readinto`` over obstore's ReadableFile (it has ``read`` only; igzip needs both)."""

    def __init__(self, fh):
        self._fh = fh

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._fh.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def stream_case(case: str, bucket_url: str, local: str) -> dict:
    """One streaming case, in this (fresh) process; returns the figures."""
    import obstore
    import s3fs
    from isal import igzip, isal_zlib
    from obstore.store import S3Store

    if case.startswith("roidask"):  # imports (nibabel, dask, zarr...) before the baseline
        from roidask.io.nifti import NiftiSource, close_handles
    base_kb = _status_kb("VmRSS")
    out = 0
    start = time.perf_counter()
    if case == "local":
        with igzip.IGzipFile(local, "rb") as gz:
            while chunk := gz.read(READ_BYTES):
                out += len(chunk)
    elif case == "s3fs":
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        path = bucket_url.removeprefix("s3://") + "/bold.nii.gz"
        with (
            fs.open(path, "rb", block_size=READ_BYTES, cache_type="readahead") as fh,
            igzip.IGzipFile(fileobj=fh) as gz,
        ):
            while chunk := gz.read(READ_BYTES):
                out += len(chunk)
    elif case == "obstore-reader":
        store = S3Store.from_url(bucket_url)
        fh = obstore.open_reader(store, "bold.nii.gz", buffer_size=READ_BYTES)
        try:  # no context manager protocol on ReadableFile
            with igzip.IGzipFile(fileobj=_RawReader(fh)) as gz:
                while chunk := gz.read(READ_BYTES):
                    out += len(chunk)
        finally:
            fh.close()
    elif case == "obstore-stream":
        store = S3Store.from_url(bucket_url)
        dec = isal_zlib.decompressobj(wbits=31)  # one gzip member, as nibabel writes
        for piece in obstore.get(store, "bold.nii.gz").stream(min_chunk_size=READ_BYTES):
            data = dec.decompress(memoryview(piece), READ_BYTES)
            out += len(data)
            while dec.unconsumed_tail:
                data = dec.decompress(dec.unconsumed_tail, READ_BYTES)
                out += len(data)
        out += len(dec.flush())
    elif case in ("roidask-blocks", "roidask-iter"):
        src = NiftiSource.open(f"{bucket_url}/bold.nii.gz")
        if case == "roidask-iter":
            for _, _, block in src.iter_blocks(BLOCK_VOLUMES, scaled=False):
                out += block.nbytes
        else:
            for t0 in range(0, src.n_volumes, BLOCK_VOLUMES):
                out += src.read(t0, min(t0 + BLOCK_VOLUMES, src.n_volumes), scaled=False).nbytes
        out += src.offset  # the header, as the other cases count it
        close_handles()
    else:
        raise ValueError(case)
    return {
        "s": time.perf_counter() - start,
        "out": out,
        "base_kb": base_kb,
        "peak_kb": _status_kb("VmHWM"),
    }


def section_nifti(bucket_url: str, nifti: Path, rounds: int) -> None:
    size_mb = nifti.stat().st_size / 2**20
    cases = ("s3fs", "obstore-reader", "obstore-stream", "roidask-blocks", "roidask-iter", "local")
    results = {c: [] for c in cases}
    for _ in range(rounds):
        for c in cases:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", c, bucket_url, str(nifti)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[c].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    range_ms = ranged_get_ms(bucket_url)
    raw = {r["out"] for rs in results.values() for r in rs}
    assert len(raw) == 1, raw  # every client decompressed the same bytes
    raw_mb = raw.pop() / 2**20
    print(
        f"## Streaming `bold.nii.gz` ({size_mb:.0f} MB, {raw_mb:.0f} MB decompressed) "
        f"into isal igzip; {READ_BYTES // 2**20} MB reads; median of {rounds} rounds\n"
    )
    print(
        "| client | s | MB/s compressed | MB/s decompressed | peak RSS above imports MB "
        "| peak / object size |"
    )
    print("|---|---|---|---|---|---|")
    labels = {
        "s3fs": "s3fs file (readahead) -> IGzipFile",
        "obstore-reader": "obstore open_reader (ranged GETs) -> IGzipFile",
        "obstore-stream": "obstore get().stream() (one GET) -> isal_zlib",
        "roidask-blocks": f"roidask NiftiSource.read, {BLOCK_VOLUMES}-volume blocks in order",
        "roidask-iter": f"roidask NiftiSource.iter_blocks({BLOCK_VOLUMES})",
        "local": "local file -> IGzipFile",
    }
    for c in cases:
        s = statistics.median(r["s"] for r in results[c])
        extra = statistics.median((r["peak_kb"] - r["base_kb"]) / 1024 for r in results[c])
        print(
            f"| {labels[c]} | {s:.2f} | {size_mb / s:.0f} | {raw_mb / s:.0f} | {extra:.1f} "
            f"| {extra / size_mb:.2f} |"
        )
    print(
        f"\nmoto's cost per ranged GET of 1 byte: {range_ms['big']:.0f} ms from the "
        f"{size_mb:.0f} MB object vs {range_ms['small']:.1f} ms from a 1 MB object "
        "(median of 20): moto copies the object for each range, so clients that read "
        "by ranges are slowed here by moto, not by their own cost.\n",
        flush=True,
    )


def ranged_get_ms(bucket_url: str) -> dict[str, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store.from_url(bucket_url)
    obstore.put(store, "small.bin", os.urandom(2**20))
    out = {}
    for name, key in (("big", "bold.nii.gz"), ("small", "small.bin")):
        times = []
        for _ in range(20):
            start = time.perf_counter()
            obstore.get_range(store, key, start=1000, length=1)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1e3
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        case, bucket_url, local = sys.argv[2:5]
        print(json.dumps(stream_case(case, bucket_url, local)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sections", default="zarr,nifti")
    parser.add_argument(
        "--nifti",
        type=Path,
        default=None,
        help="a .nii.gz to stream (default: the seed-sized one)",
    )
    args = parser.parse_args()
    sections = args.sections.split(",")

    import isal
    import obstore
    import s3fs
    import zarr

    if args.nifti is not None and "zarr" not in sections:
        nifti, store = args.nifti.resolve(), None
    else:
        nifti, store = prepare()
    sys.path.insert(0, str(TESTS))
    from helpers.s3 import moto_s3

    versions = {m.__name__: m.__version__ for m in (zarr, obstore, s3fs, isal)}
    print(f"versions: {versions}; {os.cpu_count()} CPUs\n")
    with moto_s3() as s3:
        bucket = s3.new_bucket("read")
        start = time.perf_counter()
        stored = upload(bucket, nifti, store)
        print(
            f"uploaded {stored / 2**20:.0f} MB of store files and "
            f"{nifti.stat().st_size / 2**20:.0f} MB .nii.gz to moto in "
            f"{time.perf_counter() - start:.1f} s\n"
        )
        if "zarr" in sections:
            section_zarr(bucket, args.rounds)
        if "nifti" in sections:
            section_nifti(bucket, nifti, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
