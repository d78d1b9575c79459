"""The pass's temporary voxel file: layout, block writes in any order, tile reads, lifetime."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roidask._atomic import clean_stale
from roidask.exceptions import InvalidParameterError, OutputError
from roidask.io import spill as spill_module
from roidask.io.spill import SPILL_NAME, SpillFile, spill_file, tile_bounds, tile_grid


def every_tile(shape) -> np.ndarray:
    return np.ones([len(b) - 1 for b in tile_grid(shape)], dtype=bool)


def spill_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{SPILL_NAME}."))


@pytest.mark.parametrize(("n", "edge"), [(1, 32), (31, 32), (32, 32), (33, 32), (97, 32), (10, 3)])
def test_tile_bounds_are_near_equal_and_cover_the_axis(n, edge):
    bounds = tile_bounds(n, edge)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == n
    assert sizes.max() <= edge and sizes.max() - sizes.min() <= 1
    assert len(sizes) == -(-n // edge)


@st.composite
def problems(draw):
    shape = tuple(draw(st.integers(1, n)) for n in (9, 8, 7))
    n_t = draw(st.integers(1, 12))
    edge = draw(st.integers(2, 5))
    grid = [1] + [len(tile_bounds(n, edge)) - 1 for n in shape[1:]]  # x: one tile
    kept = np.array(draw(st.lists(st.booleans(), min_size=int(np.prod(grid)))))
    kept = kept[: int(np.prod(grid))].reshape(grid)
    # volume blocks written in any order, as the pass's tasks finish
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n_t - 1)), max_size=4)) | {0, n_t})
    blocks = list(itertools.pairwise(cuts))
    return {
        "shape": shape,
        "n_t": n_t,
        "edge": edge,
        "kept": kept,
        "blocks": draw(st.permutations(blocks)),
        "dtype": draw(st.sampled_from(["int16", "float32", "float64"])),
        "order": draw(st.sampled_from(["F", "C"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@given(problem=problems())
def test_blocks_written_in_any_order_read_back_by_tile(problem, tmp_path_factory, monkeypatch):
    """(reference, ours): the series sliced with numpy vs tiles and ranges read back."""
    folder = tmp_path_factory.mktemp("spill")
    monkeypatch.setattr(spill_module, "TILE_EDGE", problem["edge"])
    rng = np.random.default_rng(problem["seed"])
    shape = (*problem["shape"], problem["n_t"])
    data = (rng.normal(0, 1000, size=shape)).astype(problem["dtype"])
    kept = problem["kept"]
    with spill_file(folder, shape=shape, dtype=data.dtype, kept=kept) as spill:
        assert os.path.getsize(spill.path) == spill.nbytes
        for a, b in problem["blocks"]:
            spill.write_block(np.array(data[..., a:b], order=problem["order"]), a)
        for tile in np.ndindex(*kept.shape):
            sl = spill.tile_slices(tile)
            t0 = int(rng.integers(0, problem["n_t"]))
            t1 = int(rng.integers(t0 + 1, problem["n_t"] + 1))
            got = spill.read(tile, t0, t1)
            want = data[(*sl, slice(t0, t1))] if kept[tile] else 0 * data[(*sl, slice(t0, t1))]
            np.testing.assert_array_equal(got, want)
            assert got.dtype == data.dtype and got.flags.f_contiguous
        lazy = spill.to_dask(max_chunk_bytes=3 * data.itemsize)
        assert lazy.chunks[:3] == tuple(tuple(np.diff(b)) for b in spill.bounds)
        expected = data.copy()
        for tile in zip(*np.nonzero(~kept), strict=True):
            expected[spill.tile_slices(tile)] = 0
        np.testing.assert_array_equal(lazy.compute(scheduler="sync"), expected)
        # any region, not only whole tiles
        region = (slice(1, None), slice(0, -1), slice(None), slice(0, problem["n_t"]))
        np.testing.assert_array_equal(lazy[region].compute(scheduler="sync"), expected[region])
    assert spill_files(folder) == []


def test_tiles_span_x_and_cut_y_and_z(monkeypatch):
    monkeypatch.setattr(spill_module, "TILE_EDGE", 4)
    bounds = tile_grid((9, 8, 5))
    assert [b.tolist() for b in bounds] == [[0, 9], [0, 4, 8], [0, 2, 5]]


def test_file_holds_only_kept_tiles(tmp_path, monkeypatch):
    monkeypatch.setattr(spill_module, "TILE_EDGE", 4)
    kept = np.zeros((1, 2, 1), dtype=bool)
    kept[0, 1, 0] = True
    with spill_file(tmp_path, shape=(8, 8, 3, 10), dtype=np.int16, kept=kept) as spill:
        assert spill.nbytes == 8 * 4 * 3 * 10 * 2
        assert spill.starts[0, 1, 0] == 0 and (spill.starts[~kept] == -1).all()
        assert spill.path.name.startswith(f".{SPILL_NAME}.roidask-tmp-{os.getpid()}-")


def test_file_is_removed_on_success_failure_and_interrupt(tmp_path):
    kept = np.ones((1, 1, 1), dtype=bool)
    with spill_file(tmp_path, shape=(2, 2, 2, 3), dtype=np.float32, kept=kept) as spill:
        assert spill.path.exists()
    assert not spill.path.exists() and spill_files(tmp_path) == []
    for error in (RuntimeError, KeyboardInterrupt):
        with (
            pytest.raises(error),
            spill_file(tmp_path, shape=(2, 2, 2, 3), dtype=np.float32, kept=kept) as spill,
        ):
            spill.write_block(np.zeros((2, 2, 2, 3), np.float32), 0)
            raise error
        assert spill_files(tmp_path) == []


def test_a_killed_run_leaves_a_file_that_clean_stale_removes(tmp_path):
    """SIGKILL: nothing runs to remove the file; the next clean_stale (every run does it) does."""
    code = textwrap.dedent(
        f"""
        import numpy as np, sys, time
        from roidask.io.spill import spill_file
        with spill_file({str(tmp_path)!r}, shape=(4, 4, 4, 8), dtype=np.int16,
                        kept=np.ones((1, 1, 1), bool)):
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        (left,) = spill_files(tmp_path)
        assert clean_stale(tmp_path / SPILL_NAME) == []  # locked by a live process: kept
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert spill_files(tmp_path) == [left]
    assert [p.name for p in clean_stale(tmp_path / SPILL_NAME)] == [left]
    assert spill_files(tmp_path) == []


def test_a_new_file_cleans_the_stale_ones(tmp_path):
    stale = tmp_path / f".{SPILL_NAME}.roidask-tmp-1-0123abcd"
    stale.write_bytes(b"x" * 10)
    other = tmp_path / ".results.roidask-tmp-1-0123abcd"  # another output's: left alone
    other.write_bytes(b"x")
    with spill_file(tmp_path, shape=(2, 2, 2, 2), dtype=np.int16, kept=np.ones((1, 1, 1), bool)):
        assert not stale.exists() and other.exists()


def test_bad_folder_or_no_space_is_refused_before_writing(tmp_path, monkeypatch):
    kept = np.ones((1, 1, 1), dtype=bool)
    with (
        pytest.raises(OutputError, match=r"temp_dir .*missing: expected an existing folder"),
        spill_file(tmp_path / "missing", shape=(2, 2, 2, 2), dtype=np.int16, kept=kept),
    ):
        pass
    usage = spill_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(spill_module.shutil, "disk_usage", lambda _: usage._replace(free=100))
    with (
        pytest.raises(OutputError, match=r"needs 1 MiB, only 0 MiB are free there"),
        spill_file(tmp_path, shape=(64, 64, 64, 2), dtype=np.int16, kept=every_tile((64, 64, 64))),
    ):
        pass
    assert spill_files(tmp_path) == []
    with pytest.raises(InvalidParameterError, match="kept: expected a tile grid of shape"):
        SpillFile.layout(tmp_path / "x", (40, 40, 40, 2), np.int16, np.ones((2, 2, 2), bool))


def test_missing_file_is_named(tmp_path):
    kept = np.ones((1, 1, 1), dtype=bool)
    with spill_file(tmp_path, shape=(2, 2, 2, 2), dtype=np.int16, kept=kept) as spill:
        spill.path.unlink()
        with pytest.raises(OutputError, match=r"temporary voxel file .* is missing"):
            spill.write_block(np.zeros((2, 2, 2, 2), np.int16), 0)
        with pytest.raises(OutputError, match="give a temp_dir that they share"):
            spill.read((0, 0, 0), 0, 2)


def test_pickles_without_open_files(tmp_path):
    import pickle

    kept = np.ones((1, 1, 1), dtype=bool)
    with spill_file(tmp_path, shape=(2, 2, 2, 2), dtype=np.int16, kept=kept) as spill:
        spill.write_block(np.arange(16, dtype=np.int16).reshape(2, 2, 2, 2), 0)
        again = pickle.loads(pickle.dumps(spill))
        np.testing.assert_array_equal(again.read((0, 0, 0), 0, 2), spill.read((0, 0, 0), 0, 2))
    assert spill_files(tmp_path) == []
