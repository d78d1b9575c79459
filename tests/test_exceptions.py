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
