"""roidask.exceptions: one root, the builtin class a generic handler expects, and ``param``
kept wherever the error travels (pickled by a dask worker)."""

from __future__ import annotations

import pickle

import dask
import pytest

from roidask import exceptions
from roidask.exceptions import (
    DamagedStoreError,
    InvalidParameterError,
    OutputError,
    RoidaskError,
    RoidaskOSError,
    RoidaskTypeError,
    RoidaskValueError,
    RoidaskWarning,
    UnreadableFileError,
)

ERRORS = [
    getattr(exceptions, name)
    for name in exceptions.__all__
    if issubclass(getattr(exceptions, name), Exception)
    and not issubclass(getattr(exceptions, name), Warning)
]
#: Not errors: the interruptions (KeyboardInterrupt, as the handlers of Ctrl-C expect).
INTERRUPTIONS = [
    getattr(exceptions, name)
    for name in exceptions.__all__
    if issubclass(getattr(exceptions, name), BaseException)
    and not issubclass(getattr(exceptions, name), Exception)
]
WARNINGS = [
    getattr(exceptions, name)
    for name in exceptions.__all__
    if issubclass(getattr(exceptions, name), Warning)
]
BRANCHES = (RoidaskValueError, RoidaskTypeError, RoidaskOSError)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_one_root_and_a_builtin_base(cls):
    assert issubclass(cls, RoidaskError)
    if cls not in (RoidaskError, *BRANCHES):
        # exactly one branch, hence exactly one of ValueError / TypeError / OSError
        assert [b for b in BRANCHES if issubclass(cls, b)] != []
        builtins = [b for b in (ValueError, TypeError, OSError) if issubclass(cls, b)]
        assert len(builtins) == 1, (cls, builtins)


def test_interruptions_are_handled_as_ctrl_c():
    assert INTERRUPTIONS == [exceptions.Terminated]
    assert issubclass(exceptions.Terminated, KeyboardInterrupt)
    assert exceptions.Terminated.status_of(exceptions.Terminated()) == 143
    assert exceptions.Terminated.status_of(KeyboardInterrupt()) == 130


def test_branches():
    assert issubclass(RoidaskValueError, ValueError)
    assert issubclass(RoidaskTypeError, TypeError)
    assert issubclass(RoidaskOSError, OSError)
    assert issubclass(DamagedStoreError, ValueError)
    assert issubclass(UnreadableFileError, OSError) and issubclass(OutputError, OSError)


@pytest.mark.parametrize("cls", WARNINGS, ids=lambda c: c.__name__)
def test_warnings_share_a_root(cls):
    assert issubclass(cls, RoidaskWarning) and issubclass(cls, UserWarning)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_message_is_whole_and_param_is_kept_by_pickle(cls):
    exc = cls("mask_img m.nii.gz: mask is empty", param="mask_img")
    assert str(exc) == "mask_img m.nii.gz: mask is empty"
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc) and back.param == "mask_img"


def test_os_errors_are_not_split_into_errno_and_strerror():
    exc = UnreadableFileError("bold b.nii: permission denied", param="bold")
    assert exc.errno is None and str(exc) == "bold b.nii: permission denied"


def fail_on_worker(_):
    raise InvalidParameterError("fwhm: expected a finite number >= 0, got -1", param="fwhm")


def test_param_survives_a_dask_worker_process():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        delayed = dask.delayed(fail_on_worker)(1)
        with pytest.raises(InvalidParameterError) as info:
            client.compute(delayed).result()
    assert info.value.param == "fwhm"
    assert str(info.value) == "fwhm: expected a finite number >= 0, got -1"


# -- every error names its parameter ----------------------------------------------------------
def _images():
    """Small in-memory images: a 4D series with conditions, a mask, labels."""
    import nibabel as nib
    import numpy as np

    from roidask.io import as_image, like_image

    rng = np.random.default_rng(0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    bold = as_image(nib.Nifti1Image(rng.normal(size=(5, 4, 3, 6)).astype(np.float32), affine))
    bold = bold.assign_coords(condition=("time", ["face", "house"] * 3))
    mask = like_image(np.ones((5, 4, 3), np.uint8), bold)
    labels = like_image(np.arange(60).reshape(5, 4, 3) % 3, bold)
    return bold, mask, labels


def _call(case: str):
    import nibabel as nib
    import numpy as np

    from roidask import ops
    from roidask.io import as_image, like_image
    from roidask.pipeline import roi_pipeline

    bold, mask, labels = _images()
    calls = {
        "threshold_img mode": lambda: ops.threshold_img(mask, threshold=1, mode="bogus"),
        "label connectivity": lambda: ops.label(mask, connectivity=7),
        "label connectivity and structure": lambda: ops.label(
            mask, connectivity=6, structure=np.ones((3, 3, 3))
        ),
        "label structure": lambda: ops.label(mask, structure=np.zeros((3, 3, 3))),
        "binary_dilation structure": lambda: ops.binary_dilation(mask, structure="x"),
        "mask_and alone": lambda: ops.mask_and(mask),
        "mask not binary, at compute": lambda: ops.mask_and(mask * 2, mask).values,
        "extract background_label": lambda: ops.extract_signals(
            bold, labels, background_label=1.5
        ),
        "extract float labels": lambda: ops.extract_signals(bold, labels + 0.5),
        "extract median with fwhm": lambda: ops.extract_signals(
            bold, labels, strategy="median", fwhm=6
        ),
        "nibabel 5D": lambda: as_image(nib.Nifti1Image(np.zeros((2, 2, 2, 3, 2)), np.eye(4))),
        "nibabel 2D": lambda: as_image(nib.Nifti1Image(np.zeros((2, 2)), np.eye(4))),
        "like_image shape": lambda: like_image(np.zeros((2, 2, 2)), bold),
        "pipeline empty in-memory mask": lambda: roi_pipeline(bold, mask_img=mask * 0),
    }
    return calls[case]()


@pytest.mark.parametrize(
    ("case", "param", "start"),
    [
        ("threshold_img mode", "mode", "mode: expected one of"),
        ("label connectivity", "connectivity", "connectivity: expected 6, 18 or 26"),
        ("label connectivity and structure", "structure", "connectivity and structure: give"),
        ("label structure", "structure", "structure: has no True element"),
        ("binary_dilation structure", "structure", "structure:"),
        ("mask_and alone", "other_imgs", "other_imgs: mask_and expected at least one"),
        ("mask not binary, at compute", "mask_img", "mask_img: expected a binary mask"),
        ("extract background_label", "background_label", "background_label: expected an"),
        ("extract float labels", "labels_img", "labels_img: expected integer label values"),
        ("extract median with fwhm", "fwhm", "fwhm: smoothing can only be folded"),
        ("nibabel 5D", "img", "img: a nibabel image of shape (2, 2, 2, 3, 2); expected"),
        ("nibabel 2D", "img", "img: a nibabel image of shape (2, 2); expected"),
        ("like_image shape", "data", "data: has spatial shape (2, 2, 2), reference"),
        ("pipeline empty in-memory mask", "mask_img",
         "mask_img (an in-memory image): mask is empty"),
    ],
)  # fmt: skip
def test_errors_name_their_parameter(case, param, start):
    """Each error carries ``param`` (for the command line's flags) and its message starts
    with it; an in-memory image is named so, not by its dask array's key."""
    with pytest.raises(RoidaskError) as info:
        _call(case)
    assert info.value.param == param
    assert str(info.value).startswith(start), str(info.value)
    assert "array-" not in str(info.value)
