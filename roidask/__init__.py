"""roidask: parallel, chunked, out-of-core fMRI region-of-interest analysis.

The seed analysis (nilearn's "Computing a Region of Interest (ROI) mask
manually") as lazy dask graphs over chunked zarr stores read by xarray::

    import roidask
    bold = roidask.open_subject("haxby.zarr", "subj2")["bold"]
    stats = roidask.ttest_img(roidask.smooth_img(bold, fwhm=6), contrast=("face", "house"))
    result = roidask.roi_pipeline(bold, mask_img="mask_vt.nii.gz")

The names below are the public API, loaded on first use (``import roidask``
stays cheap: the command line imports what each command needs). Subpackages:
:mod:`roidask.io` (files, stores, images), :mod:`roidask.ops` (operators),
:mod:`roidask.pipeline`, :mod:`roidask.runner`, :mod:`roidask.batch`,
:mod:`roidask.cluster`, :mod:`roidask.plotting`, :mod:`roidask.datasets`.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("roidask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

#: Public name -> module that defines it.
_API = {
    # images, files and stores
    "ImageLike": "roidask.io",
    "as_image": "roidask.io",
    "bold_from_nifti": "roidask.io",
    "convert": "roidask.io",
    "like_image": "roidask.io",
    "open_store": "roidask.io",
    "open_subject": "roidask.io",
    "to_nifti": "roidask.io",
    "verify_store": "roidask.io",
    # the seed's steps (scipy / nilearn names)
    "smooth_img": "roidask.ops",
    "mean_img": "roidask.ops",
    "ttest_img": "roidask.ops",
    "clip_logp": "roidask.ops",
    "threshold_img": "roidask.ops",
    "mask_and": "roidask.ops",
    "binary_dilation": "roidask.ops",
    "label": "roidask.ops",
    "extract_signals": "roidask.ops",
    "roi_table": "roidask.ops",
    "select_conditions": "roidask.ops",
    # the pipeline, one subject, many subjects
    "PipelineParams": "roidask.pipeline",
    "PipelineResult": "roidask.pipeline",
    "roi_pipeline": "roidask.pipeline",
    "run_subject": "roidask.runner",
    "read_manifest": "roidask.batch",
    "run_batch": "roidask.batch",
    "get_client": "roidask.cluster",
}
_SUBPACKAGES = ("batch", "cluster", "datasets", "exceptions", "io", "ops", "pipeline", "plotting")

__all__ = ["__version__", *sorted(_API), *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    if name in _SUBPACKAGES:
        return import_module(f"roidask.{name}")
    raise AttributeError(f"module 'roidask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
