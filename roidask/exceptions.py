"""Exceptions and warnings raised by roidask.

Every error is a subclass of :class:`ValueError` or :class:`TypeError` so that
generic handlers keep working, and every message names the parameter or file,
what was expected and what was found.
"""

__all__ = [
    "ClusterError",
    "ConditionError",
    "CorruptFileError",
    "DownloadError",
    "EmptyMaskWarning",
    "GridMismatchError",
    "ImageDimensionError",
    "ImageTypeError",
    "IncompleteStoreError",
    "InvalidParameterError",
    "LabelsError",
    "NonFiniteVoxelsWarning",
    "OutputExistsError",
    "RoidaskError",
    "RoidaskTypeError",
    "RoidaskWarning",
    "StoreError",
]


class RoidaskError(ValueError):
    """Base class of roidask's value errors (bad files, bad parameters)."""


class RoidaskTypeError(TypeError):
    """Base class of roidask's type errors (an argument of the wrong kind)."""


class ImageTypeError(RoidaskTypeError):
    """An image argument is not a path, nibabel image or xarray object."""


class CorruptFileError(RoidaskError):
    """A file is not a readable NIfTI, is truncated, or its gzip stream is corrupt."""


class ImageDimensionError(RoidaskError):
    """An image has the wrong number of dimensions (3D where 4D is needed, ...)."""


class GridMismatchError(RoidaskError):
    """Images that must share a voxel grid (shape and affine) do not."""


class LabelsError(RoidaskError):
    """A labels.txt / events.tsv file is malformed or does not match the data."""


class ConditionError(RoidaskError):
    """An unknown condition was asked for, or a condition has too few volumes."""


class InvalidParameterError(RoidaskError):
    """A parameter value is out of its valid range (negative fwhm, bad chunks, ...)."""


class StoreError(RoidaskError):
    """A zarr store is missing, not a roidask store, or lacks the requested subject."""


class IncompleteStoreError(StoreError):
    """A store group was not completely written (interrupted conversion)."""


class OutputExistsError(RoidaskError):
    """The output already exists and overwriting was not requested."""


class ClusterError(RoidaskError):
    """A dask scheduler is unreachable, refuses the connection or fails to start."""


class DownloadError(RoidaskError):
    """A download failed (offline, HTTP error, size/checksum mismatch, unsafe archive)."""


class RoidaskWarning(UserWarning):
    """Base class of roidask's warnings."""


class NonFiniteVoxelsWarning(RoidaskWarning):
    """NaN or infinite voxel values were found (they are set to 0 before smoothing)."""


class EmptyMaskWarning(RoidaskWarning):
    """A mask or label image selects no voxels, or some labels are empty."""
