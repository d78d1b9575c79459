"""Block reads of NIfTI files: order, the .nii.gz window and fallback, threads, bad files."""

from __future__ import annotations

import gzip
import itertools
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from helpers.files import tree, write_bold
from helpers.lazy import raise_if_dask_computes
from hypothesis import given
from hypothesis import strategies as st

from roidask.exceptions import (
    CorruptFileError,
    ImageDimensionError,
    ImageTypeError,
    InvalidParameterError,
    RoidaskTypeError,
)
from roidask.io import bold_from_nifti, nifti
from roidask.io.nifti import NiftiSource, close_handles, release_handles

SHAPE = (5, 4, 3, 24)  # 120 bytes per int16 volume
BLOCK = 3  # volumes per block: 8 blocks
N_BLOCKS = SHAPE[3] // BLOCK
BLOCK_BYTES = BLOCK * 5 * 4 * 3 * 2


@pytest.fixture(autouse=True)
def _fresh_handles():
    close_handles()
    yield
    close_handles()


def write_run(path, data):
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), str(path))
    return path


@pytest.fixture
def data(rng):
    return rng.integers(-500, 500, size=SHAPE, dtype=np.int16)


@pytest.fixture(params=[".nii.gz", ".nii"])
def run(request, tmp_path, data):
    return write_run(tmp_path / f"run{request.param}", data)


@pytest.fixture
def gz_run(tmp_path, data):
    return write_run(tmp_path / "run.nii.gz", data)


def read_blocks(path, order):
    src = NiftiSource.open(path)
    return {b: src.read(b * BLOCK, (b + 1) * BLOCK) for b in order}


def assert_blocks_equal(blocks, path):
    expected = np.asanyarray(nib.load(path).dataobj)
    for b, arr in blocks.items():
        np.testing.assert_array_equal(arr, expected[..., b * BLOCK : (b + 1) * BLOCK])


def kept(reader):
    """(offset, size) of the skipped segments a .nii.gz reader keeps, oldest first."""
    return [(start, len(seg)) for start, seg in reader._window]


def test_in_order_block_reads_match_nibabel(run):
    blocks = read_blocks(run, range(N_BLOCKS))
    assert_blocks_equal(blocks, run)
    if run.name.endswith(".gz"):
        reader = nifti._handle(run)
        assert reader._random is None  # the sequential stream served everything
        assert kept(reader) == [(0, NiftiSource.open(run).offset)]  # only the header
    close_handles()
    whole = NiftiSource.open(run).read()
    np.testing.assert_array_equal(whole, np.asanyarray(nib.load(run).dataobj))


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
@pytest.mark.parametrize("window_blocks", [None, 2, 0])
def test_out_of_order_block_reads_match_nibabel(gz_run, rng, monkeypatch, order, window_blocks):
    if window_blocks is not None:
        monkeypatch.setattr(nifti, "_WINDOW_BYTES", window_blocks * BLOCK_BYTES)
    blocks = list(range(N_BLOCKS))[::-1] if order == "reversed" else rng.permutation(N_BLOCKS)
    assert_blocks_equal(read_blocks(gz_run, blocks), gz_run)
    reader = nifti._handle(gz_run)
    assert reader._window_nbytes <= nifti._WINDOW_BYTES
    if order == "reversed":
        # the last block first: everything before it was skipped over; with a large
        # window the rest is served from memory and freed, else indexed_gzip reads it
        header = [(0, NiftiSource.open(gz_run).offset)]
        assert kept(reader) == (header if window_blocks is None else [])
        assert (reader._random is None) == (window_blocks is None)


def test_window_serves_a_block_requested_after_the_next(gz_run):
    src = NiftiSource.open(gz_run)
    reader = nifti._handle(gz_run)
    src.read(0, BLOCK)
    src.read(2 * BLOCK, 3 * BLOCK)  # skips block 1 into the window
    assert kept(reader) == [(0, src.offset), (src.offset + BLOCK_BYTES, BLOCK_BYTES)]
    assert_blocks_equal({1: src.read(BLOCK, 2 * BLOCK)}, gz_run)
    assert kept(reader) == [(0, src.offset)]  # block 1 was consumed, so freed
    assert reader._window_nbytes == src.offset
    assert reader._random is None


def test_spatial_chunks_of_one_block_decode_it_once(gz_run, data):
    """A graph chunked in space reads each block of volumes once per chunk, in turn."""
    bold = bold_from_nifti(gz_run, chunks={"x": 2, "y": 3, "time": BLOCK})
    np.testing.assert_array_equal(bold.compute(scheduler="synchronous").values, data)
    reader = nifti._handle(gz_run)
    assert reader._random is None  # repeats came from the latest block, not a seek back


def test_window_smaller_than_one_block(gz_run, rng, monkeypatch):
    monkeypatch.setattr(nifti, "_WINDOW_BYTES", 0)
    order = rng.permutation(N_BLOCKS)
    assert_blocks_equal(read_blocks(gz_run, order), gz_run)
    monkeypatch.setattr(nifti, "_WINDOW_BYTES", BLOCK_BYTES - 1)
    close_handles()
    assert_blocks_equal(read_blocks(gz_run, [5, 1, 7, 6, 0]), gz_run)
    assert nifti._handle(gz_run)._window_nbytes <= BLOCK_BYTES - 1


@given(
    order=st.lists(st.integers(0, N_BLOCKS - 1), min_size=1, max_size=3 * N_BLOCKS),
    window_blocks=st.sampled_from([0, 1, 2, 100]),
)
def test_any_order_of_block_reads_matches_nibabel(gz_run, monkeypatch, order, window_blocks):
    monkeypatch.setattr(nifti, "_WINDOW_BYTES", window_blocks * BLOCK_BYTES)
    close_handles()
    src = NiftiSource.open(gz_run)
    expected = np.asanyarray(nib.load(gz_run).dataobj)
    reader = nifti._handle(gz_run)
    for b in order:
        np.testing.assert_array_equal(
            src.read(b * BLOCK, (b + 1) * BLOCK), expected[..., b * BLOCK : (b + 1) * BLOCK]
        )
        assert reader._window_nbytes == sum(len(seg) for _, seg in reader._window)
        assert reader._window_nbytes <= nifti._WINDOW_BYTES


@given(
    ranges=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 900)), min_size=1, max_size=12),
    window=st.sampled_from([0, 100, 1000, 10_000]),
)
def test_reader_serves_arbitrary_byte_ranges(gz_run, monkeypatch, ranges, window):
    """Unaligned, overlapping ranges: partly consumed window segments keep the rest."""
    monkeypatch.setattr(nifti, "_WINDOW_BYTES", window)
    raw = gzip.decompress(gz_run.read_bytes())
    reader = nifti._GzipBlockReader(gz_run)
    try:
        for offset, n in ranges:
            assert reader.read_at(offset, n) == raw[offset : offset + n]
            assert reader._window_nbytes <= window
    finally:
        reader.close()


@pytest.mark.parametrize("n_threads", [2, 4])
def test_concurrent_reads_in_random_order(run, rng, monkeypatch, n_threads):
    monkeypatch.setattr(nifti, "_WINDOW_BYTES", 2 * BLOCK_BYTES)
    src = NiftiSource.open(run)
    expected = np.asanyarray(nib.load(run).dataobj)
    # every block three times: mostly increasing (as dask reads), then any order
    nearly_sorted = np.argsort(np.arange(N_BLOCKS) + rng.uniform(0, 3, N_BLOCKS))
    order = np.concatenate([nearly_sorted, rng.permutation(N_BLOCKS), rng.permutation(N_BLOCKS)])
    barrier = threading.Barrier(n_threads)

    def read(i):
        if i < n_threads:
            barrier.wait()
        b = int(order[i])
        return b, src.read(b * BLOCK, (b + 1) * BLOCK)

    with ThreadPoolExecutor(n_threads) as pool:
        results = list(pool.map(read, range(len(order))))
    assert len(results) == len(order)
    for b, arr in results:
        np.testing.assert_array_equal(arr, expected[..., b * BLOCK : (b + 1) * BLOCK])


def test_close_and_release_handles(gz_run, monkeypatch):
    monkeypatch.setattr(nifti, "_WINDOW_BYTES", 0)
    read_blocks(gz_run, [4, 1])  # the stream, then the indexed_gzip fallback
    reader = nifti._handle(gz_run)
    stream, random_access = reader._stream, reader._random
    assert stream is not None and random_access is not None
    close_handles()
    assert stream.closed
    assert reader._stream is None and reader._random is None
    with pytest.raises(ValueError, match="closed"):
        random_access.seek(0)
    # a fresh handle reads again; release forgets it without closing a read in progress
    assert_blocks_equal(read_blocks(gz_run, [2]), gz_run)
    assert release_handles([gz_run]) == 1
    assert release_handles([gz_run]) == 0
    assert not [k for k in nifti._HANDLES if k[:2] == (str(gz_run), os.getpid())]


def test_a_file_replaced_at_its_path_is_read_anew(tmp_path, rng):
    # a long-lived worker keeps a read handle per file: the new content at that path, not
    # the old one (roidask run --scheduler tcp://... twice on a replaced input)
    path = tmp_path / "run.nii.gz"
    first = rng.integers(-500, 500, size=SHAPE, dtype=np.int16)
    write_run(path, first)
    np.testing.assert_array_equal(NiftiSource.open(path).read(0, 2), first[..., :2])
    second = first + 1
    write_run(tmp_path / "new.nii.gz", second)
    os.replace(tmp_path / "new.nii.gz", path)
    np.testing.assert_array_equal(NiftiSource.open(path).read(0, 2), second[..., :2])


@pytest.mark.parametrize("order", ["in order", "reversed"])
def test_truncated_gz_raises_naming_the_file(gz_run, tmp_path, order):
    raw = gz_run.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    # cut the deflate data but keep the trailer, so that the header and the
    # size check pass and the data read finds the stream short
    cut.write_bytes(raw[: len(raw) * 3 // 4] + raw[-8:])
    src = NiftiSource.open(cut)
    blocks = range(N_BLOCKS) if order == "in order" else range(N_BLOCKS - 1, -1, -1)
    with pytest.raises(CorruptFileError, match=r"cut\.nii\.gz: .*(truncated|corrupt)"):
        for b in blocks:
            src.read(b * BLOCK, (b + 1) * BLOCK)


def test_write_nifti_stores_the_scaling_and_streams_dask_blocks(tmp_path, rng):
    """(reference, ours): nibabel reading back what write_nifti wrote; dask input
    (blocks computed one ahead of the writer) gives the same bytes as numpy input."""
    import dask.array as da

    stored = rng.integers(-3000, 3000, size=(4, 5, 3, 23), dtype=np.int16)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = nifti.write_nifti(
        stored, tmp_path / "a.nii.gz", affine=affine, scl_slope=0.5, scl_inter=7.0, block_volumes=4
    )
    img = nib.load(path)
    assert (img.dataobj.slope, img.dataobj.inter) == (0.5, 7.0)
    np.testing.assert_array_equal(np.asarray(img.dataobj.get_unscaled()), stored)
    np.testing.assert_allclose(img.get_fdata(), stored * 0.5 + 7.0)
    np.testing.assert_array_equal(NiftiSource.open(path).read(), (stored * 0.5 + 7.0))
    lazy = nifti.write_nifti(
        da.from_array(stored, chunks=(4, 5, 3, 3)),
        tmp_path / "b.nii.gz",
        affine=affine,
        scl_slope=0.5,
        scl_inter=7.0,
        block_volumes=4,
    )
    with gzip.open(path) as a, gzip.open(lazy) as b:
        assert a.read() == b.read()
    plain = nib.load(nifti.write_nifti(stored, tmp_path / "c.nii", affine=affine))
    assert not NiftiSource.open(plain.get_filename()).is_scaled


def test_write_nifti_on_a_big_endian_source_header(tmp_path, rng):
    """(reference, ours): nibabel reading back a map written with the header of a
    big-endian BOLD file as template: the values written, not their bytes swapped."""
    template = nib.Nifti1Header(endianness=">")
    template.set_data_dtype(np.int16)
    values = rng.normal(size=(4, 5, 3)).astype(np.float32)
    for suffix in (".nii", ".nii.gz"):
        path = nifti.write_nifti(
            values, tmp_path / f"t{suffix}", affine=np.eye(4), header=template
        )
        np.testing.assert_array_equal(nib.load(path).get_fdata(), values)


#: (values, dtype, the message after "dtype: "): values a dtype cannot hold. The values
#: of a mean EPI (3..1760) were written as int8 wrapped (1760 as -32), as bool 0..255,
#: and a mask times 3 as bool held 3.
_MEAN = np.linspace(3.0, 1760.0, 60).reshape(5, 4, 3).astype(np.float32)
_MASK3 = np.tile(np.array([0, 3], dtype=np.int64), 30).reshape(5, 4, 3)
_WITH_NAN = np.where(_MEAN > 100, _MEAN, np.nan)
_UNFIT = {
    "int8": (_MEAN, "int8", r"int8 holds -128\.\.127, found values 3\.\.1760; choose a type that "
             r"holds them, or leave dtype unset to write the data's \(float32\)$"),
    "uint8-negative": (_MEAN - 10, "uint8", r"uint8 holds 0\.\.255, found values -7\.\.1750;"),
    "int16-inf": (np.where(_MEAN > 1000, np.inf, _MEAN), "int16",
                  r"int16 holds -32768\.\.32767, found values 3\.\.inf;"),
    "int32-from-int64": (_MASK3 * 2**40, "int32", r"int32 holds -2147483648\.\.2147483647, "
                         r"found values 0\.\.3298534883328; .*\(int64\)$"),
    "nan-as-int16": (_WITH_NAN, "int16", r"int16 cannot hold NaN, found 4 NaN value\(s\); choose "
                     r"a float type \(float32\), or replace them first \(img\.fillna\(0\)\)$"),
    "mean-as-bool": (_MEAN, bool, r"bool holds 0 and 1 \(stored as uint8\), found values "
                     r"3\.\.1760 \(3, 32\.77966, 62\.559322 and 57 more are neither\); binarize"),
    "mask3-as-bool": (_MASK3, "bool", r"bool holds 0 and 1 \(stored as uint8\), found values "
                      r"0\.\.3 \(3 is neither\); binarize the image first"),
    "half-as-bool": (_MASK3 / 6, "bool", r".*, found values 0\.\.0\.5 \(0\.5 is neither\)"),
    "complex-as-float": (_MEAN + 1j, "float32", r"float32 cannot hold complex values"),
    "float64-beyond-float32": (_MEAN.astype(np.float64) * 1e36, "float32",
                               r"float32 holds magnitudes up to 3\.403e\+38, found 1\.76e\+39; "
                               r"choose float64$"),
    "4D-by-blocks": (np.stack([_MEAN / 20, _MEAN], axis=3), "int8",
                     r"int8 holds -128\.\.127, found values 3\.\.1760 in volumes 1-1;"),
}  # fmt: skip


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("case", list(_UNFIT))
def test_values_a_dtype_cannot_hold_are_refused_and_nothing_is_written(tmp_path, case, lazy):
    """Values are never wrapped: a value the on-disk type cannot hold is refused, as the
    block holding it is computed, before the file is committed (an existing file, with
    overwrite=True, is left as it was; no temporary sibling is left)."""
    values, dtype, message = _UNFIT[case]
    data = da.from_array(values, chunks=(5, 4, 3, 1)[: values.ndim]) if lazy else values
    old = nifti.write_nifti(
        np.ones((2, 2, 2), np.uint8), tmp_path / "old.nii.gz", affine=np.eye(4)
    )
    before = tree(tmp_path)
    for path in (tmp_path / "new.nii", tmp_path / "new.nii.gz", old):
        with pytest.raises(InvalidParameterError, match=rf"^dtype: {message}") as info:
            nifti.write_nifti(
                data, path, affine=np.eye(4), dtype=dtype, block_volumes=1, overwrite=True
            )
        assert info.value.param == "dtype"
        assert tree(tmp_path) == before


def test_what_a_dtype_holds_is_written_exactly(tmp_path):
    """(reference, ours): nibabel reading back values that fit the type asked for: floats
    rounded to the nearest integer up to its limits, bool as uint8 0/1 from 0.0 and 1.0,
    float64 rounded to float32 (not refused), and a byte order asked for (``>i2``) written
    as the header says (native), not its bytes swapped."""
    edges = np.array([-128.4, 127.4, -0.5, 0.5, 1.5, 126.6] * 4).reshape(2, 3, 4)
    cases = [
        (edges, "int8", np.rint(edges).astype(np.int8)),
        (np.arange(24.0).reshape(2, 3, 4) % 2, bool, (np.arange(24).reshape(2, 3, 4) % 2)),
        (edges / 3, "float32", (edges / 3).astype(np.float32)),
        (np.arange(-12, 12).reshape(2, 3, 4), ">i2", np.arange(-12, 12).reshape(2, 3, 4)),
    ]
    for k, (values, dtype, expected) in enumerate(cases):
        img = nib.load(
            nifti.write_nifti(values, tmp_path / f"{k}.nii", affine=np.eye(4), dtype=dtype)
        )
        stored = np.asanyarray(img.dataobj)
        assert stored.dtype == (np.uint8 if dtype is bool else np.dtype(dtype).newbyteorder("="))
        np.testing.assert_array_equal(stored, expected)


_Z = np.zeros((2, 2, 2, 3))
#: (keyword arguments, error class, parameter, message): what write_nifti refuses
#: before it computes anything (they were tracebacks of nibabel, numpy and range()).
_BAD_WRITES = {
    "affine-3x3": ({"affine": np.eye(3)}, InvalidParameterError, "affine",
                   r"the affine is not a 4x4 matrix of numbers \(shape \(3, 3\)\)"),
    "affine-text": ({"affine": "eye"}, InvalidParameterError, "affine",
                    r"the affine is not a 4x4 matrix of numbers \(str\)"),
    "affine-singular": ({"affine": np.diag([2.0, 2.0, 0.0, 1.0])}, InvalidParameterError,
                        "affine", r"the affine is singular \(voxel sizes 2, 2, 0 mm\)"),
    "tr_s": ({"tr_s": -1}, InvalidParameterError, "tr_s",
             r"expected a positive finite number of seconds, got -1$"),
    "scl_slope": ({"scl_slope": 0}, InvalidParameterError, "scl_slope",
                  r"expected a finite non-zero number, got 0$"),
    "scl_inter": ({"scl_inter": float("nan")}, InvalidParameterError, "scl_inter",
                  r"expected a finite number, got nan$"),
    "block_volumes": ({"block_volumes": 0}, InvalidParameterError, "block_volumes",
                      r"expected an integer >= 1, got 0$"),
    "dtype-unknown": ({"dtype": "foo"}, InvalidParameterError, "dtype",
                      r"expected one of the data types bool, uint8, .*, complex128, got 'foo'$"),
    "dtype-float16": ({"dtype": "float16"}, InvalidParameterError, "dtype",
                      r"expected one of the data types .* got 'float16'$"),
    "dtype-text": ({"dtype": "U3"}, InvalidParameterError, "dtype", r".*, got 'U3'$"),
    "data-float16": ({"data": _Z.astype(np.float16)}, InvalidParameterError, "dtype",
                     r"not given, and the data's type float16 is not one NIfTI stores; pass "
                     r"dtype= one of bool, "),
    "data-text": ({"data": np.full((2, 2, 2), "a")}, ImageTypeError, "data",
                  r"holds values of type <U1; NIfTI stores numbers$"),
    "data-2D": ({"data": np.zeros((2, 2))}, ImageDimensionError, "data",
                r"has shape \(2, 2\); expected a 3D or 4D array$"),
    "header": ({"header": 3}, RoidaskTypeError, "header",
               r"expected a nibabel header \(img\.header\) or None, got int$"),
    "mark-number": ({"mark": 1}, InvalidParameterError, "mark",
                    r"expected None or a str of 1 to 32 latin-1 characters .*, got 1$"),
    "mark-too-long": ({"mark": "x" * 33}, InvalidParameterError, "mark", r".*, got 'x{33}'$"),
    "overwrite": ({"overwrite": "no"}, InvalidParameterError, "overwrite",
                  r"expected True or False, got 'no'$"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_BAD_WRITES))
def test_write_nifti_refuses_bad_parameters_before_computing(tmp_path, case):
    kwargs, error, param, message = _BAD_WRITES[case]
    kwargs = {"data": da.zeros((2, 2, 2, 3), chunks=1), "affine": np.eye(4), **kwargs}
    with raise_if_dask_computes(), pytest.raises(error, match=rf"^{param}: {message}") as info:
        nifti.write_nifti(kwargs.pop("data"), tmp_path / "out.nii.gz", **kwargs)
    assert info.value.param == param
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", ["nifti1", "nifti2", "extension", "big-endian"])
def test_open_reads_the_header_as_nibabel_does(tmp_path, rng, suffix, kind):
    """(reference, ours): nibabel's load against the header read from the file's first
    bytes; then the voxels through that header."""
    values = rng.integers(-500, 500, size=(6, 5, 4, 7), dtype=np.int16)
    affine = np.array([[-2.5, 0, 0, 90], [0, 2.5, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])
    klass = nib.Nifti2Image if kind == "nifti2" else nib.Nifti1Image
    if kind == "big-endian":
        values = values.astype(">i2")
    img = klass(values, affine)
    img.header.set_slope_inter(0.5, 3.0)
    if kind == "extension":  # the data starts after the extension
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 5000))
    path = tmp_path / f"run{suffix}"
    nib.save(img, str(path))
    reference = nib.load(path)
    src = NiftiSource.open(path)
    assert src.header.binaryblock == reference.header.binaryblock
    assert src.offset == reference.dataobj.offset > (5000 if kind == "extension" else 0)
    assert (src.slope, src.inter) == (0.5, 3.0)
    np.testing.assert_array_equal(src.affine, reference.affine)
    np.testing.assert_array_equal(src.read(0, 7), np.asanyarray(reference.dataobj))


def test_release_handles_resolves_only_the_paths_it_is_given(tmp_path, data, monkeypatch):
    """Releasing one file's handle costs the same with many handles cached (the group level
    releases each subject's: resolving every cached handle each time was quadratic)."""
    paths = [write_run(tmp_path / f"run{i}.nii.gz", data) for i in range(20)]
    for path in paths:
        NiftiSource.open(path).read(0, 1)
    resolved = []
    real = nifti._handle_name
    monkeypatch.setattr(nifti, "_handle_name", lambda p: resolved.append(p) or real(p))
    link = tmp_path / "link.nii.gz"  # another name of a cached file: released too
    link.symlink_to(paths[3])
    assert release_handles([link]) == 1
    assert resolved == [link]
    assert release_handles([paths[3]]) == 0 and len(resolved) == 2


@pytest.mark.parametrize("case", ["gzip-named-nii", "short", "pair", "corrupt-gzip"])
def test_open_refuses_what_it_cannot_read(tmp_path, data, case):
    """One line naming the file and what is wrong, from the first bytes alone."""
    gz = write_run(tmp_path / "run.nii.gz", data)
    if case == "gzip-named-nii":
        path = tmp_path / "run.nii"
        path.write_bytes(gz.read_bytes())
        want = r"is gzip-compressed but not named \.gz; rename it run\.nii\.gz"
    elif case == "short":
        path = tmp_path / "short.nii.gz"
        path.write_bytes(gzip.compress(gzip.decompress(gz.read_bytes())[:200]))
        want = r"holds 200 bytes once decompressed, fewer than a NIfTI header \(348 bytes\)"
    elif case == "pair":
        path = tmp_path / "pair.nii"
        img = nib.Nifti1Pair(data, np.eye(4))
        nib.save(img, str(tmp_path / "pair.img"))
        path.write_bytes((tmp_path / "pair.hdr").read_bytes() + b"\0" * data.nbytes)
        want = r"not a single-file NIfTI image \(magic b'ni1'"
    else:
        raw = bytearray(gz.read_bytes())
        raw[20:60] = bytes(40)  # the deflate stream's first bytes
        path = tmp_path / "corrupt.nii.gz"
        path.write_bytes(bytes(raw))
        want = r"not a readable NIfTI file \(truncated or corrupt gzip\?\)"
    with pytest.raises(CorruptFileError, match=rf"^img {path}: {want}"):
        NiftiSource.open(path)


def test_a_gzip_file_of_several_members(tmp_path, data):
    """(reference, ours): nibabel reading a .nii.gz of three gzip members (cat a.gz b.gz,
    bgzip): valid, so read, though its trailer gives the last member's size only; the
    same file cut short is refused when opened."""
    raw = write_run(tmp_path / "run.nii", data).read_bytes()
    cuts = [0, len(raw) // 3, 2 * len(raw) // 3, len(raw)]
    members = b"".join(gzip.compress(raw[a:b]) for a, b in itertools.pairwise(cuts))
    path = tmp_path / "members.nii.gz"
    path.write_bytes(members)
    np.testing.assert_array_equal(NiftiSource.open(path).read(), nib.load(path).get_fdata())
    decodes = []
    real = nifti._sequential
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nifti, "_sequential", lambda *a: decodes.append(a) or real(*a))
        NiftiSource.open(path)
        NiftiSource.open(path)
    assert decodes == []  # its size was checked once, when first opened
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(members[: len(members) * 3 // 5] + members[-8:])  # the trailer kept
    with pytest.raises(CorruptFileError, match=r"^img .*cut\.nii\.gz: gzip stream is corrupt or"):
        NiftiSource.open(cut)


def test_open_reads_no_further_than_the_header_without_extensions(tmp_path, data, monkeypatch):
    """A large vox_offset without extensions: the header's bytes, not up to the data."""
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_data_offset(8 * 2**20)
    path = tmp_path / "far.nii"
    nib.save(img, str(path))
    reads = []
    real = nifti._prefix
    monkeypatch.setattr(nifti, "_prefix", lambda p, n, gz: reads.append(n) or real(p, n, gz))
    src = NiftiSource.open(path)
    assert src.offset == 8 * 2**20 and max(reads) <= 352
    np.testing.assert_array_equal(src.read(0, SHAPE[3]), data)


@pytest.mark.parametrize(
    ("rows", "match"),
    [([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]], r"is singular \(voxel sizes 2, 2, 0 mm\)"),
     ([[2, 0, 2, 0], [0, 2, 0, 0], [2, 0, 2, 0]],  # the x and z axes are one direction
      r"is singular \(voxel sizes 2\.82843, 2, 2\.82843 mm\)"),
     ([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, np.nan, 0]], "holds NaN or infinite values")],
)  # fmt: skip
def test_an_affine_that_is_not_a_voxel_transform_is_refused_before_reading(tmp_path, rows, match):
    # smoothing and dilation in mm divide by the voxel sizes: a zero column of the sform
    # gave a 38-line traceback after the pass
    path = write_bold(tmp_path / "bold.nii.gz", 6, shape=(4, 4, 3))
    img = nib.load(path)
    header = img.header.copy()
    header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=2)
    for axis, row in zip("xyz", rows, strict=True):
        header[f"srow_{axis}"] = row
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, header), path)
    where = re.escape(str(path))
    with pytest.raises(
        CorruptFileError, match=rf"^bold {where}: its affine \(sform/qform\) {match}"
    ):
        NiftiSource.open(path, param="bold")
