"""Exceptions and warnings raised by roidask.

Every roidask error derives from :class:`RoidaskError`, and also from the
builtin class a generic handler expects: :class:`ValueError` for bad values
(files whose content is wrong, parameters out of range), :class:`TypeError`
for arguments of the wrong kind, :class:`OSError` for what the operating
system or the network refused (unreadable files, unwritable folders,
unreachable schedulers and servers). ``except RoidaskError`` catches them all.

Every message names the parameter or the file, what was expected and what was
found. Messages of the library name Python parameters (``mask_img``,
``overwrite=True``); the command line maps them to its flags. An error that
concerns one parameter carries its name in :attr:`RoidaskError.param`.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ClusterError",
    "ConditionError",
    "CorruptFileError",
    "DamagedStoreError",
    "DownloadError",
    "EmptyMaskWarning",
    "EventsWarning",
    "GridMismatchError",
    "ImageDimensionError",
    "ImageTypeError",
    "IncompleteBatchWarning",
    "IncompleteOutputError",
    "IncompleteStoreError",
    "InvalidParameterError",
    "LabelsError",
    "LabelsWarning",
    "LockWarning",
    "ManifestError",
    "NonFiniteVoxelsWarning",
    "ObjectStoreError",
    "OutputError",
    "OutputExistsError",
    "RoidaskError",
    "RoidaskOSError",
    "RoidaskTypeError",
    "RoidaskValueError",
    "RoidaskWarning",
    "StaleResultsWarning",
    "StoreError",
    "StudyNodeWarning",
    "Terminated",
    "UnreadableFileError",
    "UnverifiedStoreWarning",
]


class RoidaskError(Exception):
    """Root of every roidask error.

    Parameters
    ----------
    message : str
        The whole message: the parameter or file first, then what was expected
        and what was found.
    param : str, optional
        The Python parameter the error is about (``"mask_img"``, ``"chunks"``),
        so that a front end can name its own flag for it.

    Attributes
    ----------
    subject_param : str or None
        For the error of one subject of a batch (``param`` is then ``"manifest"``):
        the parameter the subject's own error was about (``"contrast"``).
    """

    subject_param: str | None = None

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.param = param

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # keep ``param`` across processes (dask workers)
        return (_rebuild, (type(self), str(self), self.param))


def _rebuild(cls, message, param):
    return cls(message, param=param)


class RoidaskValueError(RoidaskError, ValueError):
    """A value is wrong: a file's content, a parameter out of range."""


class RoidaskTypeError(RoidaskError, TypeError):
    """An argument is of the wrong kind."""


class RoidaskOSError(RoidaskError, OSError):
    """The system refused: a file cannot be read or written, a server cannot be reached."""

    def __init__(self, message: str = "", *, param: str | None = None):
        # OSError's (errno, strerror) constructor is not used: the message is whole.
        RoidaskError.__init__(self, message, param=param)


# -- values ----------------------------------------------------------------------------------
class InvalidParameterError(RoidaskValueError):
    """A parameter value is out of its valid range (negative fwhm, bad chunks, ...)."""


class CorruptFileError(RoidaskValueError):
    """A file is empty, truncated, not a NIfTI, or its gzip stream is corrupt."""


class ImageDimensionError(RoidaskValueError):
    """An image has the wrong number of dimensions (3D where 4D is needed, ...)."""


class GridMismatchError(RoidaskValueError):
    """Images that must share a voxel grid (shape and affine) do not."""


class LabelsError(RoidaskValueError):
    """A labels.txt / events.tsv file is malformed or does not match the data."""


class ManifestError(RoidaskValueError):
    """A batch manifest (TSV or BIDS-like folder) is malformed or incomplete."""


class ConditionError(RoidaskValueError):
    """An unknown condition was asked for, or a condition has too few volumes."""


class StoreError(RoidaskValueError):
    """A zarr store is missing, not a roidask store, or lacks the requested subject."""


class IncompleteStoreError(StoreError):
    """A store group was not completely written (interrupted conversion)."""


class DamagedStoreError(StoreError):
    """A store chunk is missing, truncated or fails its checksum."""


# -- types -----------------------------------------------------------------------------------
class ImageTypeError(RoidaskTypeError):
    """An image argument is not a path, nibabel image, xarray object or store."""


# -- the system ------------------------------------------------------------------------------
class UnreadableFileError(RoidaskOSError):
    """An input cannot be read: missing, permission denied, a folder where a file is due."""


class IncompleteOutputError(UnreadableFileError):
    """An input is (in) an ``s3://`` output whose upload did not finish: its marker says
    ``complete: false`` (the command writing it was killed, or is still running)."""


class OutputError(RoidaskOSError):
    """An output cannot be written where asked (missing or read-only parent, foreign path)."""


class OutputExistsError(OutputError):
    """The output already exists and replacing it was not asked for (or is not allowed)."""


class ClusterError(RoidaskOSError):
    """A dask scheduler is unreachable, refuses the connection or fails to start."""


class ObjectStoreError(RoidaskOSError):
    """An object store (S3) cannot be reached, or failed a request for another reason."""


class DownloadError(RoidaskOSError):
    """A download failed (offline, HTTP error, size/checksum mismatch, unsafe archive)."""


# -- interruptions ---------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """The ``roidask`` command received SIGTERM (``kill``, ``timeout``, SLURM's ``scancel``):
    handled as Ctrl-C is, so that nothing partial is kept (exit status 143)."""

    #: Stops (signal numbers) that Python dropped where they landed (a weakref callback,
    #: a ``__del__``) and :mod:`roidask._launch` signals again: one still here when the
    #: command has ended is its exit status.
    dropped: ClassVar[list[int]] = []

    @staticmethod
    def status_of(exc: KeyboardInterrupt) -> int:
        """The shell's exit status for ``exc``: 128 + the signal (SIGTERM 15, SIGINT 2).

        Parameters
        ----------
        exc : KeyboardInterrupt
            What stopped the command: a :class:`Terminated` (SIGTERM) or a plain
            KeyboardInterrupt (Ctrl-C, SIGINT).

        Returns
        -------
        int
            143 for SIGTERM, 130 for SIGINT.
        """
        return 143 if isinstance(exc, Terminated) else 130

    @staticmethod
    def describe(exc: KeyboardInterrupt) -> str:
        """What stopped the command, for its last line: ``"terminated (SIGTERM)"`` or
        ``"interrupted"`` (Ctrl-C).

        Parameters
        ----------
        exc : KeyboardInterrupt
            What stopped the command: a :class:`Terminated` (SIGTERM) or a plain
            KeyboardInterrupt (Ctrl-C, SIGINT).

        Returns
        -------
        str
            The words for the command's last line.
        """
        return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


# -- warnings --------------------------------------------------------------------------------
class RoidaskWarning(UserWarning):
    """Base class of roidask's warnings."""


class NonFiniteVoxelsWarning(RoidaskWarning):
    """NaN or infinite voxel values were found (they are set to 0 before smoothing)."""


class EmptyMaskWarning(RoidaskWarning):
    """A mask or label image selects no voxels, or some labels are empty."""


class LockWarning(RoidaskWarning):
    """A folder cannot be locked on its file system: nothing stops a second writer."""


class LabelsWarning(RoidaskWarning):
    """A labels.txt was read with an assumption: e.g. runs of several files renumbered."""


class EventsWarning(RoidaskWarning):
    """Events of an events.tsv file fall outside the run they describe."""


class UnverifiedStoreWarning(RoidaskWarning):
    """A store was written without chunk checksums: damage cannot be detected."""


class StudyNodeWarning(RoidaskWarning):
    """A published node of a study store is no longer whole: it is no longer listed."""


class IncompleteBatchWarning(RoidaskWarning):
    """A group level of a batch folder whose batch was interrupted: subjects are not done."""


class StaleResultsWarning(RoidaskWarning):
    """Results an earlier command added (a group permutation test) were of other inputs and
    are replaced without them: the command that made them must be run again."""
