"""Tests of roidask.plotting.geometry: world <-> voxel, cut coordinates in mm."""

from __future__ import annotations

import numpy as np
import pytest
from plotting_helpers import AFFINE, SHAPE, blob, image

from roidask import plotting
from roidask.exceptions import InvalidParameterError
from roidask.plotting import geometry


def test_world_voxel_helpers_match_the_affine_inverse(rng):
    oblique = np.eye(4)
    oblique[:3, :3] = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    oblique[:3, 3] = rng.normal(size=3) * 50
    for affine in (AFFINE, oblique):
        ijk = rng.uniform(0, 20, size=(7, 3))
        xyz = plotting.voxel_to_world(affine, ijk)
        expected = (np.linalg.inv(affine) @ np.c_[xyz, np.ones(7)].T).T[:, :3]
        np.testing.assert_allclose(plotting.world_to_voxel(affine, xyz), expected, atol=1e-9)
        np.testing.assert_allclose(plotting.world_to_voxel(affine, xyz), ijk, atol=1e-9)
        np.testing.assert_allclose(xyz, (affine @ np.c_[ijk, np.ones(7)].T).T[:, :3])
    # a roidask image may stand in for its affine; single points keep shape (3,)
    np.testing.assert_allclose(
        plotting.world_to_voxel(image(blob()), [19.0, -36.0, -34.0]), [0, 0, 0], atol=1e-12
    )
    with pytest.raises(InvalidParameterError, match="coords_mm"):
        plotting.world_to_voxel(AFFINE, [1.0, 2.0])


def test_cut_coordinates_in_mm_map_to_the_nearest_voxel(haxby_bold):
    mean = haxby_bold.isel(time=0)
    affine = np.asarray(haxby_bold.attrs["affine"])
    # voxel (10, 5, 0) is at x = 60.45 - 31 = 29.45, y = -35.625 + 18.75 = -16.875, z = 0
    assert plotting.cut_voxel_indices(mean, [29.45, -16.875, 0.0]) == (10, 5, 0)
    # within half a voxel (3.1 / 3.75 mm) the nearest voxel does not change
    assert plotting.cut_voxel_indices(mean, [29.45 + 1.5, -16.875 - 1.8, 1.8]) == (10, 5, 0)
    assert plotting.cut_voxel_indices(mean, [29.45 - 1.6, -16.875, 0.0]) == (11, 5, 0)
    for ijk in [(0, 0, 0), (39, 19, 0), (22, 7, 0)]:
        xyz = plotting.voxel_to_world(affine, ijk)
        assert plotting.cut_voxel_indices(mean, xyz) == ijk


def test_cut_outside_the_volume_names_value_and_range(haxby_bold):
    mean = haxby_bold.isel(time=0)
    # the example's cut (-25, -37, -6) mm: y = -37 lies in the slab (edge -37.5 mm),
    # but z = -6 mm is outside this one-slice volume (3.75 mm thick, centred on 0)
    with pytest.raises(InvalidParameterError, match=r"z = -6 mm.*\[-1\.875, 1\.875\] mm"):
        plotting.plot_ortho(mean, cut_coords=[-25, -37, -6])
    with pytest.raises(InvalidParameterError, match=r"x = 70 mm.*\[-62, 62\] mm"):
        plotting.cut_voxel_indices(mean, [70, 0, 0])
    with pytest.raises(InvalidParameterError, match="cut_coords"):
        plotting.plot_ortho(mean, cut_coords=[0, 0])


def test_find_cut_coords_mask_centre_peak_and_empty():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:5, 3:8, 10:13] = True  # centre of mass voxel (3, 5, 11)
    assert plotting.find_cut_coords(image(mask)) == pytest.approx(
        tuple(plotting.voxel_to_world(AFFINE, (3, 5, 11)))
    )
    # a non-mask image is cut through its largest |value|
    signed = blob() - 3 * blob(centre=(4, 6, 5))
    assert plotting.find_cut_coords(image(signed)) == pytest.approx(
        tuple(plotting.voxel_to_world(AFFINE, (4, 6, 5)))
    )
    # an all-zero image: the central voxel
    centre = (np.asarray(SHAPE) - 1) // 2
    assert plotting.find_cut_coords(image(np.zeros(SHAPE))) == pytest.approx(
        tuple(plotting.voxel_to_world(AFFINE, centre))
    )


def test_view_cuts_follow_the_world_axes_whatever_the_voxel_order():
    """The views of a permuted, flipped grid are the world-oriented planes."""
    vol = blob()
    grid = geometry.Grid.of(image(vol))
    assert grid.vox == (0, 1, 2) and grid.flip == (True, False, False)
    assert [grid.step(w) for w in range(3)] == [2.0, 3.0, 4.0]
    (cuts,), _ = geometry.view_cuts([vol], grid, np.array([15, 12, 9]))
    names = [view[0] for view in geometry.VIEWS]
    assert names == list(plotting.VIEW_NAMES)
    np.testing.assert_array_equal(cuts[0], vol[15, :, :].T)  # sagittal: (z, y)
    np.testing.assert_array_equal(cuts[1], vol[::-1, 12, :].T)  # coronal: (z, x), x flipped
    np.testing.assert_array_equal(cuts[2], vol[::-1, :, 9].T)  # axial: (y, x), x flipped
