"""Input/output: NIfTI files, labels, zarr stores, tables and the xarray image model.

Modules import only downward: ``grid`` and ``chunks`` (no roidask imports but
exceptions), ``nifti`` and ``labels`` (files), ``image`` (images from files and
arrays), ``store_read``, ``conversions`` (:func:`as_image`, the one entry point),
``store_write``, ``tables``.
"""

from roidask.io.chunks import normalize_chunks
from roidask.io.conversions import ImageLike, as_image, like_image, open_map
from roidask.io.grid import affine_of, check_same_grid, voxel_size_mm
from roidask.io.image import bold_from_nifti, image_from_nifti, to_nifti
from roidask.io.labels import read_events, read_labels, volume_labels
from roidask.io.nifti import write_nifti
from roidask.io.store_read import (
    DamagedChunk,
    list_subjects,
    open_store,
    open_subject,
    verify_store,
)
from roidask.io.store_write import convert, write_image
from roidask.io.tables import (
    read_roi_table,
    read_signals_tsv,
    signals_to_frame,
    write_roi_table,
    write_signals_tsv,
)

__all__ = [
    "DamagedChunk",
    "ImageLike",
    "affine_of",
    "as_image",
    "bold_from_nifti",
    "check_same_grid",
    "convert",
    "image_from_nifti",
    "like_image",
    "list_subjects",
    "normalize_chunks",
    "open_map",
    "open_store",
    "open_subject",
    "read_events",
    "read_labels",
    "read_roi_table",
    "read_signals_tsv",
    "signals_to_frame",
    "to_nifti",
    "verify_store",
    "volume_labels",
    "voxel_size_mm",
    "write_image",
    "write_nifti",
    "write_roi_table",
    "write_signals_tsv",
]
