"""The group level: a batch of subjects with ROIs in folds, then its permutation test
(``run_batch(permutation=...)`` and ``roidask group``) on real dask clusters (127.0.0.1).

References: the subjects' own t maps and atlases as written; the exhaustive sign-flip
p-values by exact enumeration of the 2**n flips with scipy (nilearn parity of the
permutation engine itself: tests/ops/test_permutation.py).
"""

from __future__ import annotations

import itertools
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from roidask.batch import GroupPermutation, SubjectSpec, group_from, run_batch
from roidask.batch.group import group_is_current
from roidask.cli import main
from roidask.cluster import get_client
from roidask.exceptions import (
    IncompleteBatchWarning,
    InvalidParameterError,
    OutputError,
    StaleResultsWarning,
)
from roidask.pipeline import PipelineParams

pytestmark = pytest.mark.timeout(240)

SHAPE = (16, 20, 12)
N_VOLUMES = 726  # 6 runs
N_SUBJECTS = 4


PARAMS = PipelineParams(roi_definition="split-half", threshold=3.0)
PERMUTATION = GroupPermutation(n_perm=100, cluster_threshold=0.01)


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """A batch of 4 synthetic subjects with split-half ROIs and an exhaustive permutation
    test (2**4 - 1 = 15 flips <= n_perm), cluster-size FWE at p < 0.01: its folder and
    its subjects."""
    from roidask.datasets import make_synthetic_dataset

    root = tmp_path_factory.mktemp("group")
    subjects = make_synthetic_dataset(
        root / "data", n_subjects=N_SUBJECTS, shape=SHAPE, n_volumes=N_VOLUMES, effect_pct=6.0
    )
    specs = [
        SubjectSpec(f"{i:02d}", (s.bold,), (s.labels,), s.mask_vt)
        for i, s in enumerate(subjects, start=1)
    ]
    out = root / "batch"
    with get_client(processes=True, n_workers=2, threads_per_worker=1, memory_limit="1GiB"):
        table = run_batch(
            specs,
            out,
            params=PARAMS,
            plots=False,
            granularity="subject",  # each subject's folds in one worker task
            permutation=PERMUTATION,
        )
    assert table["status"].tolist() == ["done"] * N_SUBJECTS, table["error"].tolist()
    return out, specs


@pytest.fixture(scope="module")
def batch(batch_run):
    return batch_run[0]


def tmaps_of(out) -> np.ndarray:
    return np.stack(
        [nib.load(out / f"sub-{i:02d}" / "tstat.nii.gz").get_fdata() for i in range(1, 5)],
        axis=-1,
    )


def exact_max_t_logp(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """-log10 of #{flips: max |t| >= |t|} / 2**n over every sign flip (scipy's t)."""
    x = maps[mask]
    observed = np.abs(stats.ttest_1samp(x, 0.0, axis=-1).statistic)
    maxima = [
        np.abs(stats.ttest_1samp(x * np.array(signs), 0.0, axis=-1).statistic).max()
        for signs in itertools.product([1, -1], repeat=x.shape[1])
    ]
    p = (np.asarray(maxima)[:, None] >= observed[None, :] * (1 - 1e-12)).mean(axis=0)
    return -np.log10(p)


def test_batch_with_folds_writes_fold_nodes_and_the_group_test(batch):
    study = xr.open_datatree(batch / "study.zarr", engine="zarr")
    node = study["sub-01"].to_dataset()
    assert node.attrs["roi_definition"] == "split-half"
    assert node["atlas"].dims == ("fold", "x", "y", "z") and node.sizes["fold"] == 2
    assert node["signals"].dims == ("fold", "roi", "time")
    assert list(node["roi_runs"].values) == ["0 2 4", "1 3 5"]
    for k in range(2):
        written = nib.load(batch / "sub-01" / f"atlas_fold-{k}.nii.gz").get_fdata()
        np.testing.assert_array_equal(node["atlas"].values[k], written)
    group = batch / "group"
    # the ROI overlap counts the subjects with an ROI in any fold
    atlases = [
        np.stack(
            [
                np.asarray(nib.load(batch / f"sub-{i:02d}" / f"atlas_fold-{k}.nii.gz").dataobj)
                for k in range(2)
            ]
        )
        for i in range(1, 5)
    ]
    counts = sum((a > 0).any(axis=0).astype(int) for a in atlases)
    np.testing.assert_array_equal(
        np.asarray(nib.load(group / "roi_overlap.nii.gz").dataobj), counts
    )
    # exhaustive max-t: identical to the exact enumeration of the 16 flips
    mask = np.asarray(nib.load(group / "perm_mask.nii.gz").dataobj).astype(bool)
    maps = tmaps_of(batch)
    assert mask.sum() > 100 and np.isfinite(maps[mask]).all()
    got = nib.load(group / "perm_logp_max_t.nii.gz").get_fdata()
    np.testing.assert_allclose(got[mask], exact_max_t_logp(maps, mask), rtol=1e-6)
    assert np.isnan(got[~mask]).all()
    record = json.loads((group / "permutation.json").read_text())
    assert record["flips"] == "exhaustive" and record["n_subjects"] == 4
    assert record["two_sided"] is True and record["parameters"]["two_sided"] is True
    assert record["parameters"]["cluster_threshold"] == 0.01
    size = nib.load(group / "perm_logp_max_size.nii.gz").get_fdata()
    assert (size[mask] > 0).any()
    null = pd.read_csv(group / "perm_null.tsv", sep="\t")
    assert list(null.columns) == ["permutation", "h0_max_t", "h0_max_size", "h0_max_mass"]
    # the study's group node holds the same maps
    node = xr.open_datatree(batch / "study.zarr", engine="zarr")["group"].to_dataset()
    np.testing.assert_array_equal(node["perm_logp_max_t"].values, got.astype(np.float32))
    np.testing.assert_allclose(node["perm_h0_max_t"].values, null["h0_max_t"], rtol=1e-8)
    assert node.attrs["permutation_flips"] == "exhaustive"


def test_batch_tsv_gives_the_roi_count_of_each_fold(batch, capsys):
    """With folds, ``batch.tsv``'s ``n_rois`` is each fold's number of ROIs, ``3;4`` (never
    their sum, which counts no set of ROIs), as ``folds.tsv`` counts them and as the study
    node's ``n_rois`` attribute lists them; ``roidask info`` shows them the same way."""
    table = pd.read_csv(batch / "batch.tsv", sep="\t", dtype=str, keep_default_na=False)
    study = xr.open_datatree(batch / "study.zarr", engine="zarr")
    for subject, cell in zip(table["subject"], table["n_rois"], strict=True):
        counts = pd.read_csv(batch / f"sub-{subject}" / "folds.tsv", sep="\t")["n_rois"].tolist()
        assert len(counts) == 2 and sum(counts) > 0
        assert cell == f"{counts[0]};{counts[1]}"
        assert study[f"sub-{subject}"].attrs["n_rois"] == counts
    cell = table["n_rois"][0]
    assert main(["info", str(batch / "study.zarr")]) == 0
    assert f"subjects: 4: sub-01 ({cell} ROIs per fold), sub-02 (" in capsys.readouterr().out
    assert main(["info", str(batch / "sub-01" / "results.zarr")]) == 0
    assert f"\nROIs: {cell} (per fold)\n" in capsys.readouterr().out


def test_a_rerun_keeps_the_group_level_of_the_same_subjects(batch_run, tmp_path):
    """A rerun of a finished batch skips its subjects and keeps its group level as it is,
    with the permutation test `roidask group` (here the batch) added, rather than writing
    it again without it; one whose subjects' results changed replaces it, and says that
    the permutation test is gone."""
    folder, specs = batch_run
    copy = shutil.copytree(folder, tmp_path / "batch")
    group = copy / "group"
    before = {p.name: p.read_bytes() for p in group.iterdir()}
    assert "permutation.json" in before
    lines: list[str] = []
    table = run_batch(specs, copy, params=PARAMS, plots=False, log=lines.append)
    assert table["status"].tolist() == ["skipped"] * N_SUBJECTS
    written = pd.read_csv(folder / "batch.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert table["n_rois"].tolist() == written["n_rois"].tolist()  # each fold's, as it ran
    assert {p.name: p.read_bytes() for p in group.iterdir()} == before
    assert "group level: of the same subjects' results as before: kept" in lines
    node = xr.open_datatree(copy / "study.zarr", engine="zarr")["group"].to_dataset()
    assert "perm_logp_max_t" in node and node.attrs["permutation_flips"] == "exhaustive"
    subjects = pd.read_csv(group / "subjects.tsv", sep="\t", dtype=str)
    assert subjects["subject"].tolist() == [f"sub-{i:02d}" for i in range(1, 5)]
    assert subjects["fingerprint"].str.fullmatch("[0-9a-f]{64}").all()
    # the same subjects in another order (as `roidask group` takes a study's): the same test
    assert group_is_current([copy / f"sub-{i:02d}" for i in (4, 3, 2, 1)], group)
    # the same permutation test asked again: kept too
    run_batch(specs, copy, params=PARAMS, plots=False, permutation=PERMUTATION)
    assert {p.name: p.read_bytes() for p in group.iterdir()} == before
    # a subject made again (a file of its folder lost), with the same results: its node
    # rewritten hides the study's group node for a while; the group level is kept, listed
    (copy / "sub-02" / "rois.tsv").unlink()
    table = run_batch(specs, copy, params=PARAMS, plots=False)
    assert table["status"].tolist() == ["skipped", "done", "skipped", "skipped"]
    assert {p.name: p.read_bytes() for p in group.iterdir()} == before
    node = xr.open_datatree(copy / "study.zarr", engine="zarr")["group"].to_dataset()
    assert "perm_logp_max_t" in node
    # other analysis parameters: every subject's results change, and the group level
    other = PipelineParams(roi_definition="split-half", threshold=3.5)
    stale = (
        r"group: its permutation test \(15 permutations\).*`roidask group .*batch "
        r"--permutations 100 --cluster-threshold 0.01` again$"
    )
    with pytest.warns(StaleResultsWarning, match=stale):
        table = run_batch(specs, copy, params=other, plots=False)
    assert table["status"].tolist() == ["done"] * N_SUBJECTS
    assert not (group / "permutation.json").exists()
    node = xr.open_datatree(copy / "study.zarr", engine="zarr")["group"].to_dataset()
    assert "perm_logp_max_t" not in node


@pytest.fixture(scope="module")
def by_workers(batch, tmp_path_factory):
    """`roidask group` with random flips on an embedded cluster of 1 and of 2 workers."""
    root = tmp_path_factory.mktemp("group-cli")
    outs = {}
    for n in (1, 2):
        outs[n] = root / f"group-{n}"
        argv = ["group", str(batch), "--out", str(outs[n]), "--permutations", "12"]
        argv += ["--seed", "4", "--chunk-perm", "5", "--cluster-threshold", "0.01"]
        argv += ["--scheduler", "local", "--n-workers", str(n), "--threads-per-worker", "1"]
        assert main([*argv, "--quiet"]) == 0
    return outs


def test_group_cli_is_reproducible_on_1_or_2_workers(by_workers, capsys):
    one, two = by_workers[1], by_workers[2]
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    assert "perm_logp_max_t.nii.gz" in names and "perm_logp_max_size.nii.gz" in names
    for name in names:
        if name.endswith(".nii.gz"):
            a, b = nib.load(one / name).get_fdata(), nib.load(two / name).get_fdata()
            np.testing.assert_array_equal(a, b, err_msg=name)
    null = pd.read_csv(one / "perm_null.tsv", sep="\t")
    pd.testing.assert_frame_equal(null, pd.read_csv(two / "perm_null.tsv", sep="\t"))
    record = json.loads((one / "permutation.json").read_text())
    assert record["flips"] == "random" and record["seed"] == 4 and len(null) == 12


def test_group_from_a_study_store_equals_the_batch_folder(batch, by_workers, tmp_path):
    out = group_from(
        batch / "study.zarr",
        out=tmp_path / "from-study",
        permutation=GroupPermutation(n_perm=12, seed=4, chunk_perm=5, cluster_threshold=0.01),
    )
    for name in ("tstat.nii.gz", "roi_overlap.nii.gz", "perm_logp_max_t.nii.gz"):
        np.testing.assert_array_equal(
            nib.load(out / name).get_fdata(), nib.load(by_workers[1] / name).get_fdata()
        )
    # the study's group node is still the batch folder's group/ (the group levels above
    # went elsewhere: from the folder and from the store)
    node = xr.open_datatree(batch / "study.zarr", engine="zarr")["group"].to_dataset()
    own = json.loads((batch / "group" / "permutation.json").read_text())
    assert node.attrs["permutation_flips"] == own["flips"] == "exhaustive"
    np.testing.assert_array_equal(
        node["perm_logp_max_t"].values,
        nib.load(batch / "group" / "perm_logp_max_t.nii.gz").get_fdata().astype(np.float32),
    )


def test_group_rejects_bad_inputs_before_writing(batch, tmp_path):
    with pytest.raises(OutputError, match=r"study .*neither a roidask batch folder"):
        group_from(tmp_path)
    alone = shutil.copytree(batch / "study.zarr", tmp_path / "study.zarr")
    with pytest.raises(OutputError, match=r"out: .*study store outside a batch folder"):
        group_from(alone)
    with pytest.raises(InvalidParameterError, match=r"cluster_threshold: expected"):
        GroupPermutation(cluster_threshold=0.7, two_sided=False)
    # the group folder never goes inside what it reads: a subject's folder, the study store
    listing = sorted(str(p) for p in batch.rglob("*"))
    for inside in (batch / "sub-01" / "group", batch / "study.zarr" / "group2"):
        with pytest.raises(OutputError, match=r"is inside the input .*never writes over"):
            group_from(batch, out=inside)
    with pytest.raises(OutputError, match=r"is inside the input"):
        group_from(alone, out=alone / "g")
    # a chunk of a subject's node gone (zarr would read NaN): refused before anything is written
    from roidask.exceptions import DamagedStoreError
    from roidask.outputs.study import published

    node = next(n for n in published(alone) if n != "group")
    next(p for p in (alone / node / "tstat" / "c").rglob("*") if p.is_file()).unlink()
    with pytest.raises(DamagedStoreError, match=rf"{node}/tstat is damaged: 1 chunk\(s\) missing"):
        group_from(alone, out=tmp_path / "g")
    assert sorted(str(p) for p in batch.rglob("*")) == listing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.zarr"]


def test_a_relative_folder_is_made_absolute_for_the_workers(batch, monkeypatch):
    from roidask.batch.group import prepare_group

    monkeypatch.chdir(batch.parent)
    plan = prepare_group(batch.name)
    try:  # the files the permutation test's tasks open: absolute
        assert plan.out == batch / "group"
        assert all(f.is_absolute() for files in plan.subjects.files for f in files)
    finally:
        plan.close()


@pytest.mark.parametrize("damage", ["replaced", "marker-gone"])
def test_group_refuses_a_subject_folder_changed_since(batch, tmp_path, damage):
    # a subject's map replaced by another of another size: never the group's input
    copy = shutil.copytree(batch, tmp_path / "batch", ignore=shutil.ignore_patterns("study.zarr"))
    tstat = copy / "sub-02" / "tstat.nii.gz"
    tstat.write_bytes(tstat.read_bytes() + b"\0")
    if damage == "marker-gone":
        (copy / "sub-02" / ".roidask.json").unlink()
        want = r"sub-02: its .roidask.json is gone"
    else:
        want = r"sub-02: tstat.nii.gz changed or removed since roidask wrote it"
    with pytest.raises(OutputError, match=want):
        group_from(copy, out=tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_group_of_an_interrupted_batch_warns(batch, tmp_path, capsys):
    """A batch folder whose batch was interrupted (subjects pending in batch.tsv): the group
    level is of the completed subjects, with a warning that says how many are not done."""
    copy = shutil.copytree(batch, tmp_path / "batch", ignore=shutil.ignore_patterns("study.zarr"))
    table = pd.read_csv(copy / "batch.tsv", sep="\t", dtype=str, keep_default_na=False)
    table.loc[table["subject"] == "04", ["status", "wall_s", "n_rois"]] = ["pending", "", ""]
    table.to_csv(copy / "batch.tsv", sep="\t", index=False)
    argv = ["group", str(copy), "--permutations", "4", "--scheduler", "local", "--n-workers", "1"]
    assert main([*argv, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"roidask: warning: {copy}: 1 of the batch's 4 subjects are not done (pending in "
        "batch.tsv: the batch was interrupted); the group level is of the 3 completed; run "
        "the batch again to finish it"
    ]
    assert "subjects: 3" in out
    assert (  # 4 random flips, and the observed maps
        "note: the smallest p these 5 flips can give is 1/5 = 0.2: no voxel can reach p < 0.05 "
        "(ask for more --permutations)"
    ) in out.splitlines()
    with pytest.warns(IncompleteBatchWarning, match="1 of the batch's 4 subjects are not done"):
        group_from(copy, out=tmp_path / "g")


@pytest.mark.parametrize("case", ["not-binary", "other-grid", "empty"])
def test_group_cli_checks_the_mask_before_a_cluster_starts(batch, tmp_path, capsys, case):
    """The permutation test's mask is read and checked with everything else, before the
    embedded cluster starts (no ``dask:`` line) and before anything is written."""
    from helpers.files import write_image

    ref = nib.load(batch / "sub-01" / "tstat.nii.gz")
    values = np.ones(SHAPE, dtype=np.uint8)
    if case == "not-binary":
        values[0, 0, 0] = 3
    elif case == "empty":
        values[:] = 0
    else:
        values = np.ones((SHAPE[0] + 1, *SHAPE[1:]), dtype=np.uint8)
    mask = write_image(tmp_path / "mask.nii.gz", values, ref.affine)
    out = tmp_path / "group"
    argv = ["group", str(batch), "--out", str(out), "--permutations", "4", "--mask", str(mask)]
    assert main([*argv, "--scheduler", "local", "--n-workers", "1"]) == 2
    err = capsys.readouterr().err
    want = {
        "not-binary": f"--mask {mask}: expected a binary mask (every voxel 0 or 1), found the "
        "value(s) 3",
        "empty": f"--mask {mask}: mask is empty (every voxel is 0)",
        "other-grid": f"--mask {mask}: not on the subjects' grid (sub-01 and mask are on "
        "different voxel grids: sub-01 has shape (16, 20, 12)",
    }[case]
    assert len(err.strip().splitlines()) == 1 and want in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
