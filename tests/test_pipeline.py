"""The ROI pipeline end to end, against nilearn's example on the real Haxby slice."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings

import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers.seed import seed_fold, seed_pipeline
from scipy import stats

from roidask.cli import main
from roidask.exceptions import (
    ConditionError,
    EmptyMaskWarning,
    GridMismatchError,
    InvalidParameterError,
    RoidaskTypeError,
)
from roidask.io import bold_from_nifti, convert
from roidask.io.grid import affine_of
from roidask.io.nifti import NiftiSource
from roidask.pipeline import PipelineParams, roi_pipeline


@pytest.fixture(scope="module")
def seed(seed_maps):
    """The example as written (scipy's t-test in float32 on float32 smoothed data)."""
    return seed_maps


@pytest.fixture(scope="module")
def seed64(haxby):
    """The example with the t-test on the same smoothed data cast to float64."""
    return seed_pipeline(
        str(haxby.bold), str(haxby.labels), str(haxby.mask), stats_dtype=np.float64
    )


@pytest.fixture(autouse=True)
def _logp_reference(request, seed, seed64):
    # -log10 p: within 1e-4 (absolute; relative 1e-5) of scipy's t-test in float64 on
    # nilearn's smoothed volumes (ours are smoothed by float32 matrix products, a few
    # ulp away); the float32 example differs from both by float32 rounding only
    # (checked with its own tolerance below).
    np.testing.assert_allclose(seed["logp"], seed64["logp"], rtol=3e-2, atol=2e-3)


def assert_matches_seed(result, seed, seed64=None):
    maps = result.maps
    np.testing.assert_allclose(seed["mean_epi"], maps["mean_epi"].values, rtol=1e-5)
    if seed64 is not None:
        np.testing.assert_allclose(seed64["logp"], maps["logp"].values, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(seed["logp"], maps["logp"].values, rtol=3e-2, atol=2e-3)
    np.testing.assert_array_equal(seed["roi_mask"], maps["roi_mask"].values.astype(bool))
    np.testing.assert_array_equal(seed["dilated"], maps["dilated_mask"].values.astype(bool))
    np.testing.assert_array_equal(seed["atlas"], maps["atlas"].values)
    assert result.n_rois == seed["n_labels"]
    signals = result.signals
    for cond, ref in seed["signals"].items():
        ours = signals.isel(time=np.flatnonzero(signals["condition"].values == cond))
        ours = ours.isel(time=slice(0, ref.shape[0])).transpose("time", "roi").values
        np.testing.assert_allclose(ref, ours, rtol=1e-5, atol=1e-3)


def test_seed_has_five_components(seed):
    assert seed["n_labels"] == 5


@pytest.mark.parametrize("chunks", [None, "x=7,y=6,time=97", "x=13,y=1,time=500"])
def test_pipeline_equals_nilearn_seed(haxby, seed, seed64, chunks):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks=chunks)
    result = roi_pipeline(bold, mask_img=haxby.mask)
    assert_matches_seed(result, seed, seed64)
    computed = result.to_dataset()  # maps and signals, coordinates included
    assert not [k for k, v in computed.variables.items() if isinstance(v.data, da.Array)]


def test_a_scaled_run_gives_one_result_from_its_file_its_integers_and_its_store(haxby, tmp_path):
    """The Haxby slice's int16 with scl_slope/scl_inter: the pipeline on its file (scaled
    values, or its stored integers as `roidask run` reads them) and on its store gives
    the same types and the same values (signals were float32 from the file, float64 from
    the store); scaled values are float64, as nibabel and nilearn read them."""
    from roidask.io.nifti import write_nifti

    stored = np.asanyarray(nib.load(haxby.bold).dataobj)
    path = write_nifti(stored, tmp_path / "scaled.nii.gz", affine=nib.load(haxby.bold).affine,
                       scl_slope=0.37, scl_inter=12.5, tr_s=2.5)  # fmt: skip
    store = convert(path, labels=haxby.labels, out=tmp_path / "scaled.zarr")
    images = [
        bold_from_nifti(path, labels=haxby.labels),
        bold_from_nifti(path, labels=haxby.labels, scaled=False),
        store,
    ]
    results = [roi_pipeline(image, mask_img=haxby.mask) for image in images]
    reference = results[0].to_dataset()
    assert results[0].n_rois >= 1 and reference["signals"].dtype == np.float64
    assert "scl_slope" in images[1].coords  # signals are values: without the scaling
    assert not {"scl_slope", "scl_inter"} & set(results[1].signals.coords)
    for result in results[1:]:
        ours = result.to_dataset()
        for name, var in reference.data_vars.items():
            assert ours[name].dtype == var.dtype, name
            np.testing.assert_array_equal(var.values, ours[name].values, err_msg=name)


def test_runs_scaled_differently_joined_with_xr_concat_equal_nilearn_seed(haxby, tmp_path):
    """The Haxby slice as two int16 runs with different scl_slope/scl_inter, each read as
    its stored integers (``scaled=False``) and joined with ``xr.concat``, a time chunk
    spanning the runs' boundary: the example's maps, ROIs and signals as nilearn's on the
    runs joined by ``concat_imgs`` (run 2's integers were scaled with run 1's scaling:
    mean EPI off by 10, no ROI, silently)."""
    from nilearn.image import concat_imgs

    from roidask.io.nifti import write_nifti

    img = nib.load(haxby.bold)
    raw = np.asanyarray(img.dataobj)
    table = pd.read_csv(haxby.labels, sep=" ")
    half = raw.shape[3] // 2  # runs 0-5, 6-11
    runs = []
    for i, (stored, slope, inter) in enumerate(
        [(raw[..., :half], 0.5, 10.0), (raw[..., half:] * 2, 0.25, 20.0)]
    ):
        path = write_nifti(stored.astype(np.int16), tmp_path / f"run{i}.nii.gz",
                           affine=img.affine, scl_slope=slope, scl_inter=inter)  # fmt: skip
        labels = tmp_path / f"labels{i}.txt"
        table.iloc[i * half : (i + 1) * half].to_csv(labels, sep=" ", index=False)
        runs.append(bold_from_nifti(path, labels=labels, scaled=False))
    concat = concat_imgs([nib.load(tmp_path / f"run{i}.nii.gz") for i in range(2)])
    nib.save(nib.Nifti1Image(concat.get_fdata(), concat.affine), tmp_path / "concat.nii.gz")
    seed = seed_pipeline(str(tmp_path / "concat.nii.gz"), str(haxby.labels), str(haxby.mask),
                         stats_dtype=np.float64)  # fmt: skip
    joined = xr.concat(runs, dim="time").chunk(time=100)  # volumes 700..799: both runs
    assert joined.dtype == np.int16 and seed["n_labels"] >= 1
    result = roi_pipeline(joined, mask_img=haxby.mask)
    assert_matches_seed(result, seed, seed)


def test_non_finite_values_equal_nilearn_seed(haxby, tmp_path):
    """NaN and inf in a float BOLD: nilearn's smooth_img sets them to 0 before the mean EPI
    and the t-test; so do we (a NaN summed into the mean EPI zeroed the whole voxel)."""
    from roidask.exceptions import NonFiniteVoxelsWarning

    img = nib.load(haxby.bold)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[20, 10, 0, 7] = np.nan  # inside the brain, in the ventral temporal mask's rows
    data[21, 12, 0, 300] = np.inf
    data[5, 5, 0, :3] = np.nan
    path = tmp_path / "bold.nii.gz"
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, img.affine, header), path)
    seed = seed_pipeline(str(path), str(haxby.labels), str(haxby.mask))
    with pytest.warns(NonFiniteVoxelsWarning, match="5 NaN/inf voxel values"):
        result = roi_pipeline(bold_from_nifti(path, labels=haxby.labels), mask_img=haxby.mask)
    assert_matches_seed(result, seed)


@pytest.mark.parametrize(
    ("scheme", "folds"),
    [
        ("split-half", [(range(0, 12, 2), range(1, 12, 2)), (range(1, 12, 2), range(0, 12, 2))]),
        ("leave-one-run-out", [([r for r in range(12) if r != k], [k]) for k in range(12)]),
    ],
)
def test_folds_equal_the_example_on_their_runs_alone(haxby, scheme, folds):
    """Each fold's ROIs are the example's pipeline on its ROI runs alone (scipy, nilearn),
    its signals NiftiLabelsMasker's on the held-out runs; one read of the data."""
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="x=13,time=100")
    with pytest.MonkeyPatch.context() as mp:
        counts = _count_volumes_read(mp)
        result = roi_pipeline(
            bold, mask_img=haxby.mask, params=PipelineParams(roi_definition=scheme)
        )
    assert sum(counts) == 1452  # every fold from one read
    assert [(list(f.roi_runs), list(f.signal_runs)) for f in result.folds] == [
        (list(a), list(b)) for a, b in folds
    ]
    assert result.maps["atlas"].dims[0] == "fold" and result.signals.dims[0] == "fold"
    for k, (roi_runs, signal_runs) in enumerate(folds):
        ref = seed_fold(
            haxby.bold, haxby.labels, haxby.mask, roi_runs=roi_runs, signal_runs=signal_runs
        )
        maps = result.maps.isel(fold=k)
        np.testing.assert_allclose(ref["logp"], maps["fold_logp"].values, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(ref["atlas"], maps["atlas"].values)
        assert ref["n_labels"] == result.fold_n_rois()[k] > 0
        signals = result.fold_signals(k)
        assert set(signals["run"].values) == set(signal_runs)
        np.testing.assert_allclose(ref["signals"], signals.values, rtol=1e-5, atol=1e-3)
    # the maps of every volume stay those of "same"
    same = roi_pipeline(bold, mask_img=haxby.mask)
    for name in ("mean_epi", "tstat", "logp"):
        np.testing.assert_array_equal(same.maps[name].values, result.maps[name].values)


def _count_volumes_read(monkeypatch) -> list[int]:
    from roidask.io.nifti import NiftiSource

    counts = []
    original = NiftiSource.read

    def counting(self, start=0, stop=None, **kwargs):
        out = original(self, start, stop, **kwargs)
        counts.append(out.shape[3] if out.ndim == 4 else 0)
        return out

    monkeypatch.setattr(NiftiSource, "read", counting)
    return counts


def test_pipeline_reads_the_data_once(haxby, seed, seed64, monkeypatch):
    counts = _count_volumes_read(monkeypatch)
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="x=13,time=100")
    result = roi_pipeline(bold, mask_img=haxby.mask)
    assert sum(counts) == 1452  # every volume read exactly once, box kept for extraction
    assert_matches_seed(result, seed, seed64)


def temp_files(folder) -> list[str]:
    """The pass's temporary voxel files in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".roidask-voxels."))


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_pipeline_reads_once_when_the_box_is_too_big(
    haxby, seed, seed64, monkeypatch, tmp_path, strategy
):
    """A box over ``box_max_bytes`` (e.g. a whole-brain mask) goes to a temporary file,
    removed afterwards: the data is still read once, and the signals do not change."""
    from roidask import onepass

    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="time=300")
    params = PipelineParams(strategy=strategy)
    mask = np.asarray(nib.load(haxby.mask).dataobj) != 0
    box = onepass.pass_box(mask, affine_of(bold), fwhm=6.0, dilation_iterations=1)
    size = onepass.box_bytes(box, 1452, np.int16)
    counts = _count_volumes_read(monkeypatch)
    options = {"mask_img": haxby.mask, "params": params, "temp_dir": tmp_path}
    result = roi_pipeline(bold, **options, box_max_bytes=size - 1)
    assert sum(counts) == 1452 and temp_files(tmp_path) == []
    counts.clear()
    kept = roi_pipeline(bold, **options, box_max_bytes=size)
    assert sum(counts) == 1452
    np.testing.assert_allclose(result.signals.values, kept.signals.values, rtol=1e-6)
    if strategy == "mean":
        assert_matches_seed(result, seed, seed64)
    monkeypatch.setattr(onepass, "BOX_MAX_BYTES", 0)  # the default limit
    counts.clear()
    again = roi_pipeline(bold, **options)
    assert sum(counts) == 1452 and temp_files(tmp_path) == []
    np.testing.assert_array_equal(again.signals.values, result.signals.values)


@pytest.mark.parametrize("bad", [-1, 1.5, "1MB", True])
def test_pipeline_rejects_a_bad_box_limit(haxby, bad):
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
    with pytest.raises(InvalidParameterError, match="box_max_bytes"):
        roi_pipeline(bold, mask_img=haxby.mask, box_max_bytes=bad)


def test_pipeline_from_store(haxby, seed, seed64, tmp_path):
    store = convert(
        haxby.bold, labels=haxby.labels, out=tmp_path / "s.zarr", chunks="x=9,time=200"
    )
    result = roi_pipeline(store, mask_img=haxby.mask, chunks="y=7")
    assert_matches_seed(result, seed, seed64)


@pytest.mark.filterwarnings("error::xarray.SerializationWarning")  # results.zarr in memory
def test_run_cli_writes_every_output(haxby, seed, seed64, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            str(haxby.bold),
            "--labels",
            str(haxby.labels),
            "--mask",
            str(haxby.mask),
            "--out",
            str(out),
            "--chunks",
            "x=11,time=300",
            "--quiet",
        ]
    )
    assert rc == 0
    summary = capsys.readouterr().out
    assert "ROIs found: 5" in summary and "peak -log10 p" in summary
    for name in ("mean_epi", "tstat", "logp", "roi_mask", "atlas"):
        assert (out / f"{name}.nii.gz").is_file()
    atlas = nib.load(out / "atlas.nii.gz")
    assert atlas.get_data_dtype() == np.int32
    np.testing.assert_array_equal(seed["atlas"], np.asanyarray(atlas.dataobj))
    np.testing.assert_allclose(nib.load(haxby.bold).affine, atlas.affine)
    np.testing.assert_allclose(
        seed64["logp"], nib.load(out / "logp.nii.gz").get_fdata(), rtol=1e-5, atol=1e-4
    )
    rois = pd.read_csv(out / "rois.tsv", sep="\t")
    assert list(rois["label"]) == [1, 2, 3, 4, 5]
    signals = pd.read_csv(out / "signals.tsv", sep="\t")
    assert list(signals.columns) == ["roi", "condition", "run", "volume", "time_s", "value"]
    assert len(signals) == 5 * 1452
    ds = xr.open_zarr(out / "results.zarr")
    np.testing.assert_array_equal(seed["atlas"], ds["atlas"].values)
    assert ds["signals"].dims == ("roi", "time")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["parameters"]["fwhm"] == 6.0 and prov["n_rois"] == 5
    assert {rec["path"].split("/")[-1] for rec in prov["inputs"]} == {
        "bold.nii.gz",
        "labels.txt",
        "mask.nii.gz",
    }
    assert all(len(rec["sha256"]) == 64 for rec in prov["inputs"])
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "mean_epi.png" in figures and "boxplots.png" in figures
    assert sum(name.startswith("roi_") for name in figures) >= 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.filterwarnings("error::xarray.SerializationWarning")
def test_run_cli_writes_the_folds(haxby, tmp_path, capsys):
    """--roi-definition: per-fold maps and figures, fold columns, a fold dimension."""
    from roidask.outputs import write_results

    out = tmp_path / "out"
    args = ["run", str(haxby.bold), "--labels", str(haxby.labels), "--mask", str(haxby.mask)]
    assert main([*args, "--out", str(out), "--roi-definition", "split-half", "--quiet"]) == 0
    summary = capsys.readouterr().out
    counts = ";".join(str(n) for n in pd.read_csv(out / "folds.tsv", sep="\t")["n_rois"])
    assert f"ROIs found: {counts} per fold, in 2 folds (split-half)" in summary
    assert "fold 0: ROIs from runs 0 2 4 6 8 10, signals of runs 1 3 5 7 9 11" in summary
    folds = pd.read_csv(out / "folds.tsv", sep="\t", dtype={"roi_runs": str, "signal_runs": str})
    assert list(folds["roi_runs"]) == ["0 2 4 6 8 10", "1 3 5 7 9 11"]
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
    result = roi_pipeline(
        bold, mask_img=haxby.mask, params=PipelineParams(roi_definition="split-half")
    )
    assert list(folds["n_rois"]) == result.fold_n_rois()
    for k in range(2):
        np.testing.assert_array_equal(
            result.maps["atlas"].values[k], nib.load(out / f"atlas_fold-{k}.nii.gz").get_fdata()
        )
        assert (out / "figures" / f"boxplots_fold-{k}.png").is_file()
    assert not (out / "atlas.nii.gz").exists()
    # `info` lists the per-fold maps and signals (fold first in their shapes)
    assert main(["info", str(out / "results.zarr")]) == 0
    info = capsys.readouterr().out
    assert "fold_logp 2x40x20x1 float32" in info and "atlas 2x40x20x1 int32" in info
    assert f"signals: signals 2x{max(result.fold_n_rois())}x1452 float64" in info
    rois = pd.read_csv(out / "rois.tsv", sep="\t")
    assert list(rois.columns[:2]) == ["fold", "label"] and len(rois) == result.n_rois
    signals = pd.read_csv(out / "signals.tsv", sep="\t")
    assert list(signals.columns) == [
        "fold",
        "roi",
        "condition",
        "run",
        "volume",
        "time_s",
        "value",
    ]
    for k, n in enumerate(result.fold_n_rois()):  # each fold: its ROIs on its held-out runs
        rows = signals[signals["fold"] == k]
        assert len(rows) == n * 726 and set(rows["run"] % 2) == {1 - k}
        ours = result.fold_signals(k).values.ravel()
        np.testing.assert_allclose(rows["value"].to_numpy(), ours, rtol=1e-6)
    ds = xr.open_zarr(out / "results.zarr")
    for name, var in ds.variables.items():  # long_name everywhere, units but on text
        assert "long_name" in var.attrs, name
        assert ("units" in var.attrs) == (var.dtype.kind not in "UOT"), name
    assert (
        ds["signals"].dims == ("fold", "roi", "time")
        and ds.attrs["roi_definition"] == "split-half"
    )
    assert ds.attrs["roidask_results_format"] == 2 and list(ds["roi_runs"].values) == list(
        folds["roi_runs"]
    )
    # written from memory as to_dataset(), read back the same
    again = write_results(result, tmp_path / "again", plots=False)
    got = xr.open_zarr(again / "results.zarr", consolidated=True).load()
    expected = result.to_dataset()
    assert_chunk_inventory(got)
    for d in (got, expected):
        d.coords["condition"] = d["condition"].astype(object).astype(str)
        for name in ("roi_runs", "signal_runs"):
            d.coords[name] = d[name].astype(object).astype(str)
    xr.testing.assert_identical(got, expected)


def assert_chunk_inventory(ds: xr.Dataset) -> None:
    """The store's chunk inventory (popped from ``ds.attrs``): every variable's chunks."""
    from roidask.io.store_read import CHUNK_GRIDS_ATTR

    grids = ds.attrs.pop(CHUNK_GRIDS_ATTR)
    assert set(grids) == set(ds.variables)
    for name, grid in grids.items():  # one chunk per small array
        assert grid == [1] * ds[name].ndim, name


def test_results_zarr_is_the_result_dataset(haxby, tmp_path):
    """results.zarr (built in memory, then written) reads back as ``to_dataset()``."""
    from roidask.outputs import write_results

    bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
    result = roi_pipeline(bold, mask_img=haxby.mask)
    out = write_results(result, tmp_path / "out", plots=False)
    got = xr.open_zarr(out / "results.zarr", consolidated=True).load()
    expected = result.to_dataset()
    assert_chunk_inventory(got)
    for ds in (got, expected):
        ds.coords["condition"] = ds["condition"].astype(object).astype(str)
    xr.testing.assert_identical(got, expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_concurrent_writes_leave_warning_filters_alone(haxby, tmp_path):
    """Subjects written at once by threads: zarr's consolidated-metadata warning is filtered
    without catch_warnings, whose blocks in concurrent threads restore each other's
    filters (and can leave "ignore everything" behind)."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from roidask.io.store_read import ignore_consolidated_warning as _ignore_consolidated_warning
    from roidask.outputs import write_results

    bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
    result = roi_pipeline(bold, mask_img=haxby.mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any other warning fails a write
        _ignore_consolidated_warning()
        before = list(warnings.filters)
        with ThreadPoolExecutor(4) as pool:
            outs = list(
                pool.map(
                    lambda i: write_results(result, tmp_path / f"s{i}", plots=False), range(8)
                )
            )
        assert warnings.filters == before
    assert all((out / "results.zarr" / "zarr.json").is_file() for out in outs)


def test_run_from_store_with_no_plots(haxby, seed, tmp_path):
    store = convert(haxby.bold, labels=haxby.labels, out=tmp_path / "s.zarr", subject="s1")
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--store",
                str(store),
                "--subject",
                "s1",
                "--mask",
                str(haxby.mask),
                "--out",
                str(out),
                "--no-plots",
                "--quiet",
            ]
        )
        == 0
    )
    assert not (out / "figures").exists()
    np.testing.assert_array_equal(seed["atlas"], nib.load(out / "atlas.nii.gz").get_fdata())
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["scheduler"].startswith("this process, ")  # no cluster by default


def test_run_imports_only_what_it_uses(haxby, tmp_path):
    """`run` without plots or cluster imports neither matplotlib, distributed nor the
    sparse graph code (used only to join labels across chunks): ~1 s of start-up."""
    store = convert(haxby.bold, labels=haxby.labels, out=tmp_path / "s.zarr", subject="s1")
    argv = ["run", "--store", str(store), "--mask", str(haxby.mask), "--no-plots", "--quiet"]
    code = (
        "import sys; from roidask.cli import main; "
        f"code = main({[*argv, '--out', str(tmp_path / 'out')]!r}); "
        "bad = [m for m in ('matplotlib', 'distributed', 'scipy.sparse.csgraph') "
        "if m in sys.modules]; print(bad); sys.exit(code or bool(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("[]")
    assert (tmp_path / "out" / "atlas.nii.gz").exists()


def test_run_schedulers(haxby, seed, tmp_path, capsys):
    """`run` computes in its own threads by default; --scheduler local starts a cluster."""
    common = ["run", str(haxby.bold), "--labels", str(haxby.labels), "--mask", str(haxby.mask)]
    one = tmp_path / "one-thread"
    assert main([*common, "--out", str(one), "--threads-per-worker", "1", "--no-plots"]) == 0
    assert json.loads((one / "provenance.json").read_text())["scheduler"] == (
        "this process, 1 thread"
    )
    local = tmp_path / "local"
    assert main([*common, "--out", str(local), "--scheduler", "local", "--no-plots"]) == 0
    assert "dask: dask scheduler inproc://" in capsys.readouterr().err
    assert json.loads((local / "provenance.json").read_text())["scheduler"] == (
        "embedded LocalCluster"
    )
    for name in ("atlas.nii.gz", "logp.nii.gz", "signals.tsv"):
        assert (one / name).read_bytes() == (local / name).read_bytes(), name
    # the .nii.gz is read directly on a cluster too: nothing is left beside the output
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    np.testing.assert_array_equal(seed["atlas"], nib.load(local / "atlas.nii.gz").get_fdata())

    bad = tmp_path / "bad"
    assert main([*common, "--out", str(bad), "--n-workers", "2", "--dashboard"]) == 2
    err = capsys.readouterr().err
    assert "--n-workers, --dashboard: apply only to an embedded cluster" in err
    assert "--scheduler local" in err and not bad.exists()


def test_mask_on_another_grid(haxby, tmp_path, capsys):
    other = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((40, 20, 2), np.uint8), np.eye(4)), other)
    with pytest.raises(GridMismatchError) as info:
        roi_pipeline(haxby.bold, mask_img=other)
    assert str(info.value).startswith(
        f"mask_img {other}: the BOLD series and the mask are on different voxel grids: the "
        "BOLD series has shape (40, 20, 1) and affine"
    )
    assert info.value.param == "mask_img"
    # the command line names the flag, before its cluster starts (no "dask:" line)
    argv = ["run", str(haxby.bold), "--labels", str(haxby.labels), "--mask", str(other)]
    rc = main([*argv, "--out", str(tmp_path / "out"), "--scheduler", "local", "--quiet"])
    assert rc == 2 and not (tmp_path / "out").exists()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"roidask: error: --mask {other}: the BOLD series and the mask are ")


def test_labels_without_contrast_conditions(haxby, tmp_path):
    with pytest.raises(ConditionError, match=r"unknown condition\(s\) \['dog'\]"):
        roi_pipeline(
            bold_from_nifti(haxby.bold, labels=haxby.labels),
            mask_img=haxby.mask,
            params=PipelineParams(contrast=("face", "dog")),
        )
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            str(haxby.bold),
            "--labels",
            str(haxby.labels),
            "--mask",
            str(haxby.mask),
            "--out",
            str(out),
            "--contrast",
            "face",
            "dog",
            "--quiet",
        ]
    )
    assert rc == 2 and not out.exists()


# -- a contrast condition of a single volume -----------------------------------------------
def labels_with_faces(haxby, folder, keep) -> str:
    """The Haxby slice's labels.txt with only the face volumes ``keep`` (their order among
    the 108) left as face, the others relabelled ``other``."""
    table = pd.read_csv(haxby.labels, sep=" ")
    faces = np.flatnonzero(table["labels"].to_numpy() == "face")
    table.loc[faces, "labels"] = "other"
    table.loc[faces[list(keep)], "labels"] = "face"
    path = folder / f"labels-{'-'.join(map(str, keep))}.txt"
    table.to_csv(path, sep=" ", index=False)
    return str(path)


def assert_effects_are_scipys(result):
    """roi_effects' t: scipy's Student t-test of the reported signals (face vs house)."""
    effects = result.roi_effects()
    assert len(effects) == sum(result.fold_n_rois()) if result.folds else result.n_rois
    for k, rows in effects.groupby("fold"):
        signals = result.fold_signals(k)
        conditions = signals["condition"].values.astype(str)
        values = signals.transpose("roi", "time").values.astype(np.float64)
        face, house = values[:, conditions == "face"], values[:, conditions == "house"]
        ref = stats.ttest_ind(face, house, axis=1)
        assert np.isfinite(ref.statistic).all()
        np.testing.assert_allclose(rows["t"].to_numpy(), ref.statistic, rtol=1e-9)


def test_one_volume_of_a_condition_equals_nilearn_seed(haxby, tmp_path):
    """One face volume vs the 108 house volumes: Student's t-test (the example's) pools the
    variance of the house volumes (df = 107); the example runs and so does roidask, with
    the same -log10 p, masks, atlas and signals (threshold 3: one volume's ROIs are weak)."""
    labels = labels_with_faces(haxby, tmp_path, [60])
    seed = seed_pipeline(
        str(haxby.bold), labels, str(haxby.mask), threshold=3.0, stats_dtype=np.float64
    )
    assert seed["n_labels"] >= 2 and seed["signals"]["face"].shape[0] == 1
    bold = bold_from_nifti(haxby.bold, labels=labels, chunks="x=13,y=7,time=97")
    result = roi_pipeline(bold, mask_img=haxby.mask, params=PipelineParams(threshold=3.0))
    assert_matches_seed(result, seed, seed)
    assert_effects_are_scipys(result)


def test_folds_with_one_volume_of_a_condition_equal_the_example(haxby, tmp_path):
    """split-half with one face volume in an even run and one in an odd run: each fold's
    ROIs come from a single face volume (Student's test), its signals hold the other."""
    labels = labels_with_faces(haxby, tmp_path, [40, 100])  # runs 4 and 11
    bold = bold_from_nifti(haxby.bold, labels=labels, chunks="x=13,time=100")
    params = PipelineParams(roi_definition="split-half", threshold=3.0)
    result = roi_pipeline(bold, mask_img=haxby.mask, params=params)
    for k, fold in enumerate(result.folds):
        runs = {"roi_runs": fold.roi_runs, "signal_runs": fold.signal_runs}
        ref = seed_fold(haxby.bold, labels, haxby.mask, threshold=3.0, **runs)
        maps = result.maps.isel(fold=k)
        np.testing.assert_allclose(ref["logp"], maps["fold_logp"].values, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(ref["atlas"], maps["atlas"].values)
        assert ref["n_labels"] == result.fold_n_rois()[k] > 0
        signals = result.fold_signals(k).values
        np.testing.assert_allclose(ref["signals"], signals, rtol=1e-5, atol=1e-3)
    assert_effects_are_scipys(result)


def test_too_few_volumes_for_the_test_are_one_line(haxby, tmp_path, capsys):
    """Welch's test needs 2 volumes of each condition, Student's 1 of each and 3 in all,
    also in each fold's ROI-defining runs; refused before any output, naming the
    parameter, the test, the counts and what each test needs."""
    one = labels_with_faces(haxby, tmp_path, [60])
    bold = bold_from_nifti(haxby.bold, labels=one)
    welch = (
        "Welch's t-test (test='welch') needs at least 2 volumes of each condition "
        "(Student's t-test, test='student': at least 1 volume of each condition and 3 in all)"
    )
    student = (
        "Student's t-test (test='student') needs at least 1 volume of each condition and 3 in "
        "all (Welch's t-test, test='welch': at least 2 volumes of each condition)"
    )
    loro_fold_6 = (
        "roi_definition: fold 6 of 'leave-one-run-out' defines its ROIs on runs [0, 1, 2, 3, "
        "4, 5, 7, 8, 9, 10, 11], which hold 0 volumes of 'face' and 99 of 'house'"
    )
    cases = [
        (
            {"test": "welch"},
            f"contrast: the data hold 1 volume of 'face' and 108 of 'house'; {welch}",
        ),
        ({"roi_definition": "leave-one-run-out"}, f"{loro_fold_6}; {student}"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConditionError) as info:
            roi_pipeline(bold, mask_img=haxby.mask, params=PipelineParams(**kwargs))
        assert str(info.value) == message
    two = labels_with_faces(haxby, tmp_path, [40, 100])
    params = PipelineParams(test="welch", roi_definition="split-half")
    with pytest.raises(ConditionError) as info:
        roi_pipeline(bold_from_nifti(haxby.bold, labels=two), mask_img=haxby.mask, params=params)
    assert str(info.value) == (
        "roi_definition: fold 0 of 'split-half' defines its ROIs on runs [0, 2, 4, 6, 8, 10], "
        f"which hold 1 volume of 'face' and 54 of 'house'; {welch}"
    )
    out = tmp_path / "out"
    argv = ["run", str(haxby.bold), "--labels", one, "--mask", str(haxby.mask)]
    assert main([*argv, "--out", str(out), "--test", "welch", "--quiet"]) == 2
    assert not out.exists()
    (line,) = capsys.readouterr().err.strip().splitlines()
    cli_line = cases[0][1].replace("test='welch'", "--test welch")
    assert line == "roidask: error: --" + cli_line.replace("test='student'", "--test student")


def test_empty_roi_set_still_writes_outputs(haxby, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            str(haxby.bold),
            "--labels",
            str(haxby.labels),
            "--mask",
            str(haxby.mask),
            "--out",
            str(out),
            "--threshold",
            "99",
            "--clip",
            "100",
            "--quiet",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "ROIs found: 0" in captured.out
    assert "roidask: warning: no ROI: no voxel of mask_img has -log10 p >= 99" in captured.err
    assert "(the peak inside the mask is 61.3355)" in captured.err  # digits enough to compare
    with pytest.warns(EmptyMaskWarning, match="no ROI"):
        result = roi_pipeline(
            bold_from_nifti(haxby.bold, labels=haxby.labels),
            mask_img=haxby.mask,
            params=PipelineParams(threshold=99, clip=100),
        )
    assert result.n_rois == 0 and result.signals.sizes["roi"] == 0
    # voxels pass the threshold, but form no ROI as large as min_roi_voxels: said so
    with pytest.warns(EmptyMaskWarning) as record:
        roi_pipeline(
            bold_from_nifti(haxby.bold, labels=haxby.labels),
            mask_img=haxby.mask,
            params=PipelineParams(min_roi_voxels=10_000),
        )
    (message,) = [str(w.message) for w in record if "no ROI" in str(w.message)]
    assert re.match(
        r"no ROI: the \d+ voxel\(s\) of mask_img with -log10 p >= 5 form no ROI of "
        r"min_roi_voxels \(10000\) voxels or more; outputs are written",
        message,
    ), message
    rois = pd.read_csv(out / "rois.tsv", sep="\t")
    assert len(rois) == 0 and "label" in rois.columns
    assert len(pd.read_csv(out / "signals.tsv", sep="\t")) == 0
    assert np.asanyarray(nib.load(out / "atlas.nii.gz").dataobj).max() == 0


# -- whole-brain-shaped subjects: the voxels go to a temporary file -------------------------
WHOLE_BRAIN_INPUTS = {
    "int16-scaled": {"dtype": "int16", "scl_slope": 0.08, "scl_inter": 100.0},
    "float32": {"dtype": "float32"},
}


@pytest.fixture(scope="module", params=sorted(WHOLE_BRAIN_INPUTS))
def whole_brain(request, tmp_path_factory):
    """A small subject as fMRIPrep writes them, its brain mask as the mask, and nilearn's
    example on it (float32 and float64 t-tests)."""
    from roidask.datasets import make_synthetic_subject

    subject = make_synthetic_subject(
        tmp_path_factory.mktemp("whole-brain") / request.param,
        shape=(24, 28, 24),
        n_volumes=300,
        effect_pct=6.0,
        **WHOLE_BRAIN_INPUTS[request.param],
    )
    files = (str(subject.bold), str(subject.labels), str(subject.brain_mask))
    reference = seed_pipeline(*files)
    assert reference["n_labels"] >= 2
    return subject, reference, seed_pipeline(*files, stats_dtype=np.float64)


def test_whole_brain_subject_equals_nilearn_reading_only_the_rois_tiles(
    whole_brain, monkeypatch, tmp_path
):
    """int16 with scl_slope/scl_inter, and float32: the mask's box is over the in-memory
    limit, so the pass writes the tiles near the mask to a temporary file and the
    extraction reads back exactly the tiles that the ROIs' smoothed weights touch."""
    from scipy import ndimage

    from roidask import onepass
    from roidask.io import spill
    from roidask.ops.kernels import fwhm_to_sigma_voxels, gaussian_radius

    subject, reference, reference64 = whole_brain
    monkeypatch.setattr(spill, "TILE_EDGE", 6)  # 1 x 5 x 4 tiles
    monkeypatch.setattr(onepass, "BOX_MAX_BYTES", 2**20)
    reads = []
    original = spill.SpillFile.read

    def counting(self, tile, start, stop):
        reads.append((tuple(int(i) for i in tile), start, stop))
        return original(self, tile, start, stop)

    monkeypatch.setattr(spill.SpillFile, "read", counting)
    bold = bold_from_nifti(subject.bold, labels=subject.labels)
    mask = np.asarray(nib.load(subject.brain_mask).dataobj) != 0
    box = onepass.pass_box(mask, affine_of(bold), fwhm=6.0, dilation_iterations=1)
    assert onepass.box_bytes(box, 300, bold.dtype) > onepass.BOX_MAX_BYTES
    result = roi_pipeline(bold, mask_img=subject.brain_mask, temp_dir=tmp_path)
    assert temp_files(tmp_path) == []
    assert_matches_seed(result, reference, reference64)
    # scaled values are float64 (as nibabel, nilearn and a store's values)
    scaled = nib.load(subject.bold).dataobj.slope != 1.0
    assert result.signals.dtype == (np.float64 if scaled else np.float32)

    # the tiles read: those holding a voxel within the kernel radius of an ROI voxel
    atlas = result.maps["atlas"].values
    radius = [gaussian_radius(s) for s in fwhm_to_sigma_voxels(affine_of(bold), 6.0)]
    support = ndimage.maximum_filter(atlas > 0, size=[2 * r + 1 for r in radius])
    bounds = spill.tile_grid(atlas.shape)
    want = {
        tile
        for tile in np.ndindex(*[len(b) - 1 for b in bounds])
        if support[tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, tile, strict=True))].any()
    }
    kept = onepass.pass_tiles(mask, affine_of(bold), fwhm=6.0, dilation_iterations=1)
    assert want < {tuple(int(i) for i in t) for t in zip(*np.nonzero(kept), strict=True)}
    assert {tile for tile, _, _ in reads} == want
    for tile in want:  # every volume of every such tile, once
        ranges = sorted((a, b) for t, a, b in reads if t == tile)
        assert ranges[0][0] == 0 and ranges[-1][1] == 300
        assert all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_temporary_file_removed_when_the_pass_fails_or_is_interrupted(
    haxby, monkeypatch, tmp_path, error
):
    from roidask.io import spill

    original = spill.SpillFile.write_block
    calls = []

    def failing(self, block, start):
        calls.append(start)
        assert self.path.exists() and temp_files(tmp_path) == [self.path.name]
        if len(calls) >= 3:  # not == 3: blocks run in threads, two may append at once
            raise error("stopped inside the pass")
        return original(self, block, start)

    monkeypatch.setattr(spill.SpillFile, "write_block", failing)
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels, chunks="time=100")
    with pytest.raises(error, match="stopped inside the pass"):
        roi_pipeline(bold, mask_img=haxby.mask, box_max_bytes=0, temp_dir=tmp_path)
    assert len(calls) >= 3
    assert temp_files(tmp_path) == []


def test_killed_run_leaves_a_temporary_file_that_clean_stale_removes(haxby, tmp_path):
    """SIGKILL in the middle of the pass: nothing can remove the file; clean_stale does
    (a run that writes a temporary file calls it on its folder, beside its output, first)."""
    from roidask._atomic import clean_stale

    out = tmp_path / "out"
    argv = ["run", str(haxby.bold), "--labels", str(haxby.labels), "--mask", str(haxby.mask)]
    argv += ["--out", str(out), "--no-plots", "--quiet"]
    code = textwrap.dedent(
        f"""
        import sys, time
        from roidask import onepass
        from roidask.io.spill import SpillFile
        from roidask.cli import main
        onepass.BOX_MAX_BYTES = 0
        def paused(self, block, start):
            print("writing", flush=True)
            time.sleep(120)
        SpillFile.write_block = paused
        main({argv!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        (left,) = temp_files(tmp_path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert temp_files(tmp_path) == [left] and not out.exists()
    assert [p.name for p in clean_stale(tmp_path / "roidask-voxels")] == [left]
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("whole_brain", ["int16-scaled"], indirect=True)
def test_stored_integers_give_the_same_bits(whole_brain, monkeypatch, tmp_path):
    """A scaled int16 series read as its stored integers (a quarter of the bytes kept in
    memory or written to the temporary file, as ``roidask run`` reads NIfTI) gives the same
    bits as its float64 values, with the box in memory or the temporary file."""
    from roidask import onepass
    from roidask.io import spill

    subject, _, _ = whole_brain
    assert NiftiSource.open(subject.bold).is_scaled
    monkeypatch.setattr(spill, "TILE_EDGE", 6)
    for limit in (None, 0):
        for strategy in ("mean", "median"):
            results = []
            for scaled in (True, False):
                bold = bold_from_nifti(subject.bold, labels=subject.labels, scaled=scaled)
                assert (bold.dtype == np.int16) != scaled
                results.append(
                    roi_pipeline(
                        bold,
                        mask_img=subject.brain_mask,
                        params=PipelineParams(strategy=strategy),
                        box_max_bytes=limit,
                        temp_dir=tmp_path,
                    ).to_dataset()
                )
            xr.testing.assert_identical(*results)
    sizes = []
    for scaled in (True, False):
        bold = bold_from_nifti(subject.bold, labels=subject.labels, scaled=scaled)
        mask = np.asarray(nib.load(subject.brain_mask).dataobj) != 0
        keep = onepass.kept_voxels(
            mask, affine_of(bold), n_volumes=300, dtype=bold.dtype, fwhm=6.0,
            dilation_iterations=1, box_max_bytes=0,
        )  # fmt: skip
        sizes.append(spill.SpillFile.layout(tmp_path, bold.shape, bold.dtype, keep.tiles).nbytes)
    assert sizes[1] * 4 == sizes[0]


#: Shuffles of the conditions in the null-data test: independent realizations of the null.
N_NULL = 16


@pytest.fixture(scope="module")
def null_effects(haxby):
    """Per scheme and per shuffle of the conditions across the real Haxby volumes (no
    effect left): the mean, over folds and ROIs, of the reported signals' face-minus-house
    t in the direction of the ROI's selection (``t * selection_sign``)."""
    bold = bold_from_nifti(haxby.bold, labels=haxby.labels)
    conditions = bold["condition"].values
    out = {}
    for scheme in ("same", "split-half", "leave-one-run-out"):
        params = PipelineParams(roi_definition=scheme, threshold=1.3)  # p < 0.05
        values = []
        for seed in range(N_NULL):
            shuffled = np.random.default_rng(seed).permutation(conditions)
            null = bold.assign_coords(condition=("time", shuffled))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EmptyMaskWarning)  # a shuffle without ROI
                effects = roi_pipeline(null, mask_img=haxby.mask, params=params).roi_effects()
            effects = effects.dropna()  # a held-out run without face or house volume
            if len(effects):
                values.append(float((effects["t"] * effects["selection_sign"]).mean()))
        out[scheme] = np.array(values)
    return out


def test_same_volumes_bias_the_effect_on_null_data(null_effects):
    """Circular analysis: ROIs selected on the volumes they report show an effect in the
    direction of their selection on data without any (every shuffle: about t = 2)."""
    same = null_effects["same"]
    assert len(same) >= N_NULL // 2 and (same > 1).all()


@pytest.mark.parametrize("scheme", ["split-half", "leave-one-run-out"])
def test_independent_rois_give_no_effect_on_null_data(null_effects, scheme):
    """ROIs defined on other runs: the held-out effect is consistent with 0. The shuffles
    are independent draws of the null, so their means' one-sample t (|t| < 3: two-sided
    p ~ 0.01 with 15 degrees of freedom) bounds it; "same" gives t > 20 on the same data."""
    values = null_effects[scheme]
    assert len(values) >= N_NULL - 2
    t = values.mean() / (values.std(ddof=1) / np.sqrt(len(values)))
    assert abs(t) < 3 and abs(values.mean()) < 0.5
    same = null_effects["same"]
    assert same.mean() / (same.std(ddof=1) / np.sqrt(len(same))) > 20


def test_the_mask_is_read_here_even_with_a_cluster(haxby):
    """A mask is small: checking it (a batch checks every subject's) sends no task to an
    active cluster (a round trip per subject: 300 subjects took 7.8 s instead of 2.9 s)."""
    from distributed import get_task_stream

    from roidask.cluster import get_client
    from roidask.io.conversions import as_image
    from roidask.pipeline import mask_values

    mask = as_image(haxby.mask, ndim=3, param="mask_img")
    with get_client(processes=False, n_workers=1, threads_per_worker=1) as client:
        with get_task_stream(client) as checked:
            inside = mask_values(mask)
        with get_task_stream(client) as summed:  # the same graph goes to the cluster
            assert int(mask.sum()) == inside.sum() > 0
        # a mask persisted on the cluster is only there: read from it
        np.testing.assert_array_equal(mask_values(mask.persist()), inside)
    assert checked.data == [] and len(summed.data) > 0


def test_params_that_are_not_pipeline_params_are_one_line(haxby):
    from roidask.exceptions import RoidaskTypeError

    with pytest.raises(
        RoidaskTypeError, match=r"^params: expected a roidask.PipelineParams .*got dict"
    ):
        roi_pipeline(haxby.bold, mask_img=haxby.mask, params={"fwhm": 6})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fwhm", "6"),
        ("fwhm", np.str_("6")),
        ("fwhm", True),
        ("fwhm", (6, "6", 6)),
        ("fwhm", (6, True, 6)),
        ("connectivity", np.array([6, 6, 6])),
    ],
)
def test_numeric_params_refuse_what_is_not_a_number(name, value):
    """fwhm refuses strings and bools as clip, threshold, the integers and connectivity do
    (none is converted); an array is not one of the connectivities."""
    with pytest.raises(InvalidParameterError, match=rf"^{name}: expected ") as info:
        PipelineParams(**{name: value})
    assert info.value.param == name
    assert f"got {value!r}" in str(info.value)


def test_check_inputs_and_roi_folds_take_params_none_as_the_defaults(haxby, haxby_bold):
    """As roi_pipeline: None is PipelineParams(); anything else but PipelineParams is
    refused in one line (never an AttributeError)."""
    from roidask.io import as_image
    from roidask.pipeline import check_inputs, roi_folds

    mask = as_image(haxby.mask)
    np.testing.assert_array_equal(
        check_inputs(haxby_bold, mask, None), check_inputs(haxby_bold, mask, PipelineParams())
    )
    assert not roi_folds(haxby_bold).independent  # "same", the default
    for call in (
        lambda: check_inputs(haxby_bold, mask, {"fwhm": 6}),
        lambda: roi_folds(haxby_bold, "split-half"),
    ):
        with pytest.raises(RoidaskTypeError, match=r"^params: expected a roidask\.PipelineParams"):
            call()
