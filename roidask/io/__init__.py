"""Input/output: NIfTI files, labels, zarr stores and the xarray image model."""

from roidask.io.image import (
    affine_of,
    as_image,
    bold_from_nifti,
    check_same_grid,
    image_from_nifti,
    like_image,
    select_conditions,
    to_nifti,
)
from roidask.io.labels import read_events, read_labels, volume_labels
from roidask.io.store import convert, list_subjects, open_store, open_subject, write_image

__all__ = [
    "affine_of",
    "as_image",
    "bold_from_nifti",
    "check_same_grid",
    "convert",
    "image_from_nifti",
    "like_image",
    "list_subjects",
    "open_store",
    "open_subject",
    "read_events",
    "read_labels",
    "select_conditions",
    "to_nifti",
    "volume_labels",
    "write_image",
]
