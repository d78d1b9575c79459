"""The bundled real Haxby 2001 slice (PyMVPA example data).

One axial slice (40x20x1) of subject 1 of Haxby et al. (2001), "Distributed and
overlapping representations of faces and objects in ventral temporal cortex",
Science 293:2425-2430, as shipped in the PyMVPA 2.6.5 source distribution:
``bold.nii.gz`` (int16, 1452 volumes, 12 runs, TR 2.5 s), ``labels.txt``
(``labels chunks``) and ``mask.nii.gz``, a brain mask of that one axial slice
(530 voxels of its posterior half). It is not a ventral temporal mask: nilearn's
example uses ``mask4_vt.nii.gz`` of the full subjects
(:func:`roidask.datasets.fetch_haxby`); on this slice, the example's "AND with the
mask" step keeps the thresholded voxels inside the brain.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

__all__ = ["HaxbySlice", "haxby_slice"]


@dataclass(frozen=True)
class HaxbySlice:
    """Paths of the bundled Haxby slice files."""

    bold: Path
    labels: Path
    mask: Path  # brain mask of the slice (not a ventral temporal mask)
    readme: Path


def haxby_slice() -> HaxbySlice:
    """Paths of the bundled real Haxby 2001 slice (no download needed).

    ``mask`` is a brain mask of the slice, not a ventral temporal mask.
    """
    root = Path(str(files("roidask.datasets") / "data" / "haxby2001-slice"))
    return HaxbySlice(
        bold=root / "bold.nii.gz",
        labels=root / "labels.txt",
        mask=root / "mask.nii.gz",
        readme=root / "README.md",
    )
