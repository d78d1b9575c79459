"""run_subject: the destination checked first; the temporary store of a cluster run is a
locked sibling of the output that the next command removes if this one is killed."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from helpers.lazy import voxel_reads

from roidask.exceptions import OutputError
from roidask.pipeline import PipelineParams
from roidask.runner import run_subject


def test_the_destination_is_checked_before_any_voxel_is_read(haxby, tmp_path):
    with voxel_reads() as reads, pytest.raises(OutputError, match=r"parent folder .* does not"):
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=tmp_path / "results" / "subj2",
                    params=PipelineParams())  # fmt: skip
    assert reads == []


def test_a_nifti_zarr_run_is_read_as_its_nifti(haxby, tmp_path):
    """(reference, ours): the same run as .nii.gz and as .nii.zarr (README: run accepts
    both), with no --chunks: the same maps and signals."""
    from roidask.io import as_image, to_nifti

    zarr_run = to_nifti(as_image(haxby.bold), tmp_path / "bold.nii.zarr")
    results = {}
    for name, bold in (("nii", haxby.bold), ("zarr", zarr_run)):
        results[name] = run_subject(bold=[bold], labels=[haxby.labels], store=None,
                                    subject=None, mask=haxby.mask, out=tmp_path / name,
                                    params=PipelineParams(), plots=False)  # fmt: skip
    ref, ours = (xr.open_zarr(tmp_path / n / "results.zarr") for n in ("nii", "zarr"))
    for var in ("tstat", "logp", "atlas", "signals"):
        np.testing.assert_array_equal(ours[var].values, ref[var].values)
