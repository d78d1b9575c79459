"""Voxel grids: the spatial coordinates of results (voxel indices, world mm)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from roidask.exceptions import InvalidParameterError
from roidask.io.grid import check_affine, spatial_coords, voxel_to_world


def test_spatial_coords_of_an_axis_aligned_grid():
    affine = np.diag([-3.0, 3.5, 4.0, 1.0])  # LAS: x decreases with the index
    affine[:3, 3] = [90.0, -126.0, -72.0]
    coords = spatial_coords((5, 6, 7), affine)
    assert sorted(coords) == ["x", "x_mm", "y", "y_mm", "z", "z_mm"]
    for axis, dim in enumerate("xyz"):
        name, index, attrs = coords[dim]
        assert name == dim and index.dtype == np.int64 and attrs["units"] == "1"
        np.testing.assert_array_equal(index, np.arange((5, 6, 7)[axis]))
        ijk = np.zeros((index.size, 3))
        ijk[:, axis] = index
        _, world, attrs = coords[f"{dim}_mm"]
        np.testing.assert_allclose(world, voxel_to_world(affine, ijk)[:, axis])
        assert attrs["units"] == "mm"


def test_oblique_grids_have_voxel_indices_only():
    """A world position depends on every index: no 1D x_mm, y_mm, z_mm."""
    rotation = nib.eulerangles.euler2mat(z=0.2)
    affine = np.eye(4)
    affine[:3, :3] = rotation * 3.0
    assert sorted(spatial_coords((4, 4, 4), affine)) == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("affine", "problem"),
    [
        (np.eye(3), r"is not a 4x4 matrix of numbers \(shape \(3, 3\)\)"),
        ("eye", r"is not a 4x4 matrix of numbers \(str\)"),
        (np.diag([2.0, 0.0, 2.0, 1.0]), r"is singular \(voxel sizes 2, 0, 2 mm\)"),
        (np.diag([2.0, 2.0, np.inf, 1.0]), r"holds NaN or infinite values"),
    ],
    ids=["3x3", "text", "singular", "infinite"],
)
def test_check_affine_of_a_parameter_names_it(affine, problem):
    """An affine given as a parameter (write_nifti's), not read from a file: a 3x3 matrix
    went on to nibabel's ValueError."""
    with pytest.raises(
        InvalidParameterError,
        match=rf"^affine: the affine {problem}; expected a 4x4 voxel-to-mm transform with "
        "three non-zero, independent axes$",
    ) as info:
        check_affine(affine, param="affine")
    assert info.value.param == "affine"
    good = check_affine([[2, 0, 0, 1], [0, 2, 0, 2], [0, 0, 2, 3], [0, 0, 0, 1]], param="affine")
    assert good.dtype == np.float64 and good.shape == (4, 4)
