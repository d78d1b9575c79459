"""The synthetic-subject generator: files, grid, labels, determinism, planted effects."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats

from roidask.datasets import (
    SyntheticSubject,
    haxby_condition_sequence,
    make_synthetic_dataset,
    make_synthetic_subject,
)
from roidask.datasets import synthetic as synthetic_module
from roidask.exceptions import InvalidParameterError, OutputError, OutputExistsError
from roidask.io import bold_from_nifti, read_labels
from roidask.io.nifti import NiftiSource

SMALL = {"shape": (12, 14, 10), "n_volumes": 200}
VOXELS = (3.5, 3.75, 3.75)


def _data(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def small_subject(tmp_path_factory) -> SyntheticSubject:
    return make_synthetic_subject(tmp_path_factory.mktemp("synth") / "sub", seed=3, **SMALL)


def test_files_dtype_grid_and_header(small_subject):
    s = small_subject
    for path in (s.bold, s.labels, s.mask_vt, s.brain_mask, s.truth_face, s.truth_house, s.truth):
        assert path.is_file(), path
        assert path.parent == s.root
    img = nib.load(s.bold)
    assert img.get_data_dtype() == np.int16
    assert img.shape == (12, 14, 10, 200)
    assert img.header.get_zooms() == pytest.approx((*VOXELS, 2.5))
    assert img.header.get_xyzt_units() == ("mm", "sec")
    affine = img.affine
    np.testing.assert_allclose(np.diag(affine)[:3], VOXELS)
    np.testing.assert_allclose(affine[:3, :3], np.diag(VOXELS))  # RAS, no rotation
    # The grid centre is the world origin, so x < 0 is the left half of the grid.
    centre = nib.affines.apply_affine(affine, (np.array([12, 14, 10]) - 1) / 2)
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)
    # roidask's own reader accepts it, with the TR from the header.
    src = NiftiSource.open(s.bold, ndim=4)
    assert src.tr_s == pytest.approx(2.5)
    assert src.voxel_size_mm == pytest.approx(VOXELS)
    for mask_path in (s.mask_vt, s.brain_mask, s.truth_face, s.truth_house):
        mask = nib.load(mask_path)
        assert mask.shape == (12, 14, 10)
        assert mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, affine)


def test_labels_are_the_real_haxby_prefix(small_subject, haxby):
    assert small_subject.labels.read_text().splitlines()[0] == "labels chunks"
    ours = read_labels(small_subject.labels)
    real = read_labels(haxby.labels).iloc[:200].reset_index(drop=True)
    assert ours.equals(real)
    bold = bold_from_nifti(small_subject.bold, labels=small_subject.labels)
    assert list(bold["condition"].values) == list(real["condition"])


def test_condition_sequence_prefix_and_repeat(haxby):
    real = read_labels(haxby.labels)
    conditions, runs = haxby_condition_sequence()
    assert len(conditions) == 1452
    assert list(conditions) == list(real["condition"])
    np.testing.assert_array_equal(runs, real["run"].to_numpy())
    conditions, runs = haxby_condition_sequence(1500)
    np.testing.assert_array_equal(conditions[1452:], conditions[:48])
    np.testing.assert_array_equal(runs[1452:], runs[:48] + 12)
    assert runs.max() == 12
    with pytest.raises(InvalidParameterError, match="n_volumes"):
        haxby_condition_sequence(0)


def test_anatomy_masks_and_truth_are_consistent(small_subject):
    s = small_subject
    data = _data(s.bold).astype(np.float64)
    brain = _data(s.brain_mask).astype(bool)
    vt = _data(s.mask_vt).astype(bool)
    face = _data(s.truth_face).astype(bool)
    house = _data(s.truth_house).astype(bool)
    mean = data.mean(axis=-1)
    assert 1000 <= np.median(mean[brain]) <= 2000
    far_outside = ~ndimage.binary_dilation(brain, iterations=2)
    assert far_outside.any()
    assert mean[far_outside].mean() < 20
    assert data.min() >= 0
    assert vt.sum() > 0 and not (vt & ~brain).any()
    assert face.any() and house.any()
    assert not (face & ~vt).any() and not (house & ~vt).any()
    assert not (face & house).any()

    truth = json.loads(s.truth.read_text())
    assert truth["seed"] == 3
    assert truth["parameters"]["shape"] == [12, 14, 10]
    assert truth["n_voxels"]["truth_face"] == face.sum()
    assert truth["n_voxels"]["truth_house"] == house.sum()
    assert {r["name"] for r in truth["regions"]} == {
        "face_left",
        "face_right",
        "house_left",
        "house_right",
    }
    # Left regions lie at x < 0 mm, and the truth voxels of each side agree.
    x_mm = nib.affines.apply_affine(nib.load(s.truth_face).affine, np.argwhere(face))[:, 0]
    for region in truth["regions"]:
        assert (region["centre_mm"][0] < 0) == (region["hemisphere"] == "left")
    assert (x_mm < 0).any() and (x_mm > 0).any()
    # Face blobs are lateral to house blobs in each hemisphere.
    by_name = {r["name"]: r["centre_mm"] for r in truth["regions"]}
    assert by_name["face_left"][0] < by_name["house_left"][0] < 0
    assert by_name["face_right"][0] > by_name["house_right"][0] > 0


def test_same_seed_same_data_other_seed_differs(tmp_path, small_subject):
    again = make_synthetic_subject(tmp_path / "again", seed=3, **SMALL)
    np.testing.assert_array_equal(_data(again.bold), _data(small_subject.bold))
    for name in ("labels", "truth"):
        assert getattr(again, name).read_bytes() == getattr(small_subject, name).read_bytes()
    for name in ("mask_vt", "brain_mask", "truth_face", "truth_house"):
        np.testing.assert_array_equal(
            _data(getattr(again, name)), _data(getattr(small_subject, name))
        )
    other = make_synthetic_subject(tmp_path / "other", seed=4, **SMALL)
    assert not np.array_equal(_data(other.bold), _data(small_subject.bold))


def test_data_do_not_depend_on_block_sizes(tmp_path, small_subject, monkeypatch):
    monkeypatch.setattr(synthetic_module, "_TASK_VOLUMES", 3)
    monkeypatch.setattr(synthetic_module, "_BLOCK_VOLUMES", 7)
    blocks = make_synthetic_subject(tmp_path / "blocks", seed=3, **SMALL)
    np.testing.assert_array_equal(_data(blocks.bold), _data(small_subject.bold))


def _face_vs_house(subject) -> tuple[np.ndarray, np.ndarray]:
    """The seed pipeline: smooth 6 mm FWHM, face vs house t-test; (t, -log10 p)."""
    data = _data(subject.bold).astype(np.float32)
    conditions = read_labels(subject.labels)["condition"].to_numpy()
    sigma = 6.0 / np.sqrt(8 * np.log(2)) / np.asarray(VOXELS)
    smooth = ndimage.gaussian_filter(data, (*sigma, 0.0), mode="constant")
    t, p = stats.ttest_ind(
        smooth[..., conditions == "face"], smooth[..., conditions == "house"], axis=-1
    )
    return t, -np.log10(p)


@pytest.fixture(scope="module")
def full_subject(tmp_path_factory) -> SyntheticSubject:
    """Default effect sizes and the whole 1452-volume sequence, on a small grid."""
    return make_synthetic_subject(tmp_path_factory.mktemp("full") / "sub", shape=(24, 28, 20))


def test_planted_effects_are_recovered_by_the_seed_pipeline(full_subject):
    s = full_subject
    t, logp = _face_vs_house(s)
    brain = _data(s.brain_mask).astype(bool)
    vt = _data(s.mask_vt).astype(bool)
    face = _data(s.truth_face).astype(bool)
    house = _data(s.truth_house).astype(bool)
    x_mm = nib.affines.apply_affine(nib.load(s.bold).affine, np.argwhere(np.ones(face.shape)))
    left = (x_mm[:, 0] < 0).reshape(face.shape)
    for truth, sign in ((face, 1.0), (house, -1.0)):
        for side in (left, ~left):
            region = truth & side
            assert region.any()
            assert (logp[region] > 5).any() and (np.sign(t[region]) == sign).all()
    detected = (logp > 5) & vt
    assert (detected & (face | house)).sum() >= 0.6 * (face | house).sum()
    # As in the seed pipeline: dilated detections form one ROI per planted region.
    rois, n_rois = ndimage.label(ndimage.binary_dilation(detected))
    assert n_rois == 4
    for k in range(1, n_rois + 1):
        hits = [(rois == k) & truth & side for truth in (face, house) for side in (left, ~left)]
        assert sorted(bool(h.any()) for h in hits) == [False, False, False, True]
    # Nothing survives in the VT mask away from the planted regions, and next to
    # nothing in the rest of the brain (smoothing spreads effects ~1 voxel).
    far = brain & ~ndimage.binary_dilation(face | house, iterations=2)
    assert far.sum() > 0.8 * brain.sum()
    assert (far & vt).sum() >= 0.25 * (vt & ~face & ~house).sum()
    assert not (logp[far & vt] > 5).any()
    assert (logp[far] > 5).mean() < 0.002


def test_no_planted_effect_no_detection(tmp_path):
    s = make_synthetic_subject(tmp_path / "null", shape=(16, 18, 14), effect_pct=0.0, seed=1)
    _, logp = _face_vs_house(s)
    assert not (logp[_data(s.mask_vt).astype(bool)] > 5).any()
    assert (logp[_data(s.brain_mask).astype(bool)] > 5).mean() < 0.002
    truth = json.loads(s.truth.read_text())
    assert truth["parameters"]["effect_pct"] == 0.0


def test_dataset_of_subjects(tmp_path, small_subject):
    subjects = make_synthetic_dataset(tmp_path / "ds", n_subjects=2, seed=0, **SMALL)
    assert [s.root.name for s in subjects] == ["sub-01", "sub-02"]
    assert [s.seed for s in subjects] == [0, 1]
    assert all(isinstance(s, SyntheticSubject) and s.bold.is_file() for s in subjects)
    single = make_synthetic_subject(tmp_path / "single", seed=0, **SMALL)
    np.testing.assert_array_equal(_data(subjects[0].bold), _data(single.bold))
    assert not np.array_equal(_data(subjects[0].bold), _data(subjects[1].bold))
    with pytest.raises(InvalidParameterError, match="n_subjects"):
        make_synthetic_dataset(tmp_path / "none", n_subjects=0)


def test_existing_output_needs_overwrite(tmp_path):
    first = make_synthetic_subject(tmp_path / "s", shape=(12, 14, 10), n_volumes=20)
    before = first.bold.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        make_synthetic_subject(tmp_path / "s", shape=(12, 14, 10), n_volumes=20, seed=5)
    assert first.bold.read_bytes() == before
    second = make_synthetic_subject(
        tmp_path / "s", shape=(12, 14, 10), n_volumes=30, seed=5, overwrite=True
    )
    assert nib.load(second.bold).shape[-1] == 30
    assert json.loads(second.truth.read_text())["seed"] == 5


def test_overwrite_never_replaces_files_roidask_did_not_write(tmp_path):
    from helpers.files import tree

    user = tmp_path / "mine"
    user.mkdir()
    (user / "bold.nii.gz").write_bytes(b"my own scan")
    (user / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(OutputError, match=r"^out_dir .*mine: holds \['bold.nii.gz'\], which "):
        make_synthetic_subject(user, shape=(12, 14, 10), n_volumes=20, overwrite=True)
    assert tree(tmp_path) == before
    # a subject written before markers existed (its truth.json) is still roidask's
    old = make_synthetic_subject(tmp_path / "old", shape=(12, 14, 10), n_volumes=20)
    (old.root / ".roidask.json").unlink()
    make_synthetic_subject(old.root, shape=(12, 14, 10), n_volumes=20, seed=3, overwrite=True)
    assert json.loads(old.truth.read_text())["seed"] == 3
    # the demo's --synthetic subject, in a folder of the user's
    from roidask.cli import main

    demo = tmp_path / "demo"
    (demo / "synthetic-data").mkdir(parents=True)
    (demo / "synthetic-data" / "labels.txt").write_text("my labels")
    assert main(["demo", "--synthetic", "--out", str(demo), "--quiet"]) == 2
    assert (demo / "synthetic-data" / "labels.txt").read_text() == "my labels"
    assert not (demo / "haxby-slice").exists()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"shape": (12, 14)}, "shape: expected 3 positive integers"),
        ({"shape": (12, 0, 10)}, "shape: expected 3 positive integers"),
        ({"shape": (4, 4, 4)}, "too coarse"),
        ({"voxel_size_mm": (3.0, -1.0, 3.0)}, "voxel_size_mm"),
        ({"n_volumes": 0}, "n_volumes"),
        ({"tr_s": 0}, "tr_s"),
        ({"noise_pct": -1.0}, "noise_pct"),
        ({"seed": -2}, "seed"),
        ({"dtype": "int8"}, "dtype"),
        ({"scl_slope": 0.0}, "scl_slope: expected a positive"),
        ({"scl_inter": float("nan")}, "scl_inter"),
        ({"dtype": "float32", "scl_slope": 2.0}, "only int16 data is scaled"),
        ({"vt_scale": -1.0}, "vt_scale"),
        ({"regions_per_hemisphere": 0}, "regions_per_hemisphere"),
    ],
)
def test_invalid_parameters_are_named(tmp_path, options, match):
    kwargs = {"shape": (12, 14, 10), "n_volumes": 10, **options}
    with pytest.raises(InvalidParameterError, match=match):
        make_synthetic_subject(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_int16_scaled_and_float32_files_hold_the_same_values(tmp_path, small_subject):
    """fMRIPrep-like inputs: int16 with scl_slope/scl_inter, and float32."""
    plain = _data(small_subject.bold).astype(np.float64)
    scaled = make_synthetic_subject(
        tmp_path / "scaled", seed=3, scl_slope=0.25, scl_inter=-3.5, **SMALL
    )
    floats = make_synthetic_subject(tmp_path / "float", seed=3, dtype="float32", **SMALL)
    img = nib.load(scaled.bold)
    assert img.get_data_dtype() == np.int16
    assert (img.dataobj.slope, img.dataobj.inter) == (0.25, -3.5)
    assert NiftiSource.open(scaled.bold).is_scaled
    values = np.asarray(nib.load(floats.bold).dataobj)
    assert values.dtype == np.float32 and not NiftiSource.open(floats.bold).is_scaled
    np.testing.assert_allclose(img.get_fdata(), values, rtol=0, atol=0.125 + 1e-3)
    np.testing.assert_allclose(plain, values, rtol=0, atol=0.5 + 1e-3)
    assert json.loads(scaled.truth.read_text())["parameters"]["scl_slope"] == 0.25
    # the masks do not depend on the data type
    for name in ("mask_vt", "truth_face"):
        np.testing.assert_array_equal(
            _data(getattr(floats, name)), _data(getattr(small_subject, name))
        )


def test_larger_vt_mask_and_more_planted_regions(tmp_path):
    """A whole-brain-like setting: a VT mask of a third of the brain, 8 regions apart."""
    options = {"shape": (40, 48, 40), "n_volumes": 2, "voxel_size_mm": (4.0, 4.0, 4.0)}
    one = make_synthetic_subject(tmp_path / "one", **options)
    many = make_synthetic_subject(
        tmp_path / "many", vt_scale=3.25, regions_per_hemisphere=2, **options
    )
    brain = _data(many.brain_mask).astype(bool)
    vt = _data(many.mask_vt).astype(bool)
    assert vt.sum() > 5 * _data(one.mask_vt).sum() and not (vt & ~brain).any()
    truth = json.loads(many.truth.read_text())
    names = [r["name"] for r in truth["regions"]]
    assert sorted(names) == sorted(
        f"{c}_{h}{s}" for c in ("face", "house") for h in ("left", "right") for s in ("", "_2")
    )
    assert all(r["n_voxels"] > 0 for r in truth["regions"])
    regions, n = ndimage.label(_data(many.truth_face) | _data(many.truth_house))
    assert n == 8 and not (regions.astype(bool) & ~vt).any()
    # the first regions are the default ones
    first = {r["name"]: r["centre_mm"] for r in json.loads(one.truth.read_text())["regions"]}
    centres = {r["name"]: r["centre_mm"] for r in truth["regions"]}
    assert {name: centres[name] for name in first} == first
    with pytest.raises(InvalidParameterError, match="regions_per_hemisphere: cannot place 6"):
        make_synthetic_subject(tmp_path / "full", regions_per_hemisphere=6, **options)
