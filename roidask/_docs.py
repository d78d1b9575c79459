"""Shared docstring fragments (nilearn's ``fill_doc``).

A docstring writes ``%(bold_img)s`` where the description of a parameter that
many functions share belongs; :func:`fill_doc` substitutes it, keeping the
indentation of the line the placeholder is on. Fragments are written for a
numpy-style ``Parameters`` section (name line, then the description indented
by four more spaces).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["DOCS", "fill_doc"]

_KINDS = (
    "    A ``.nii``/``.nii.gz`` file, a roidask zarr store, a nibabel image or an\n"
    "    xarray object in roidask's layout (see :func:`roidask.io.as_image`)."
)

DOCS: dict[str, str] = {
    "img": "img : ImageLike\n    3D image or 4D BOLD series.\n" + _KINDS,
    "img_3d": "img : ImageLike\n    3D image.\n" + _KINDS,
    "bold_img": "img : ImageLike\n    4D BOLD series with a ``condition`` coordinate along time.\n"
    + _KINDS,
    "mask_img": "mask_img : ImageLike\n"
    "    3D binary mask (bool, or numbers that are all 0 or 1).\n" + _KINDS,
    "labels_img": "labels_img : ImageLike\n    3D label image (0 = background).\n" + _KINDS,
    "fwhm": (
        "fwhm : float, sequence of 3 floats/None, or None\n"
        "    Full width at half maximum of the Gaussian kernel, in mm: one value for all\n"
        "    spatial axes or one per axis (x, y, z); ``None`` or ``0`` (for all or for\n"
        "    one axis) means no smoothing along that axis."
    ),
    "connectivity": (
        "connectivity : {6, 18, 26}, optional\n"
        "    Neighbourhood: voxels sharing a face (6, scipy's default), a face or an edge\n"
        "    (18), or a face, an edge or a corner (26)."
    ),
    "condition": "condition : str, optional\n    Only use the volumes with this condition label.",
    "overwrite": (
        "overwrite : bool\n    Replace an existing output that roidask wrote (default: refuse)."
    ),
}

F = TypeVar("F", bound=Callable)


def _indented(text: str, indent: str) -> str:
    lines = text.splitlines()
    return "\n".join([lines[0], *(indent + line if line else line for line in lines[1:])])


def fill_doc(func: F) -> F:
    """Substitute ``%(name)s`` placeholders of ``func.__doc__`` with :data:`DOCS` fragments."""
    doc = func.__doc__
    if not doc:
        return func
    lines = []
    for line in doc.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("%(") and stripped.endswith(")s"):
            key = stripped[2:-2]
            if key not in DOCS:
                raise KeyError(f"fill_doc: no docstring fragment {key!r} (in {func.__qualname__})")
            indent = line[: len(line) - len(stripped)]
            lines.append(indent + _indented(DOCS[key], indent))
        else:
            lines.append(line)
    func.__doc__ = "\n".join(lines)
    return func
