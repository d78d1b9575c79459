"""roidask._validate: one line naming the parameter, the expectation and the value."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers.privileges import unprivileged
from scipy import stats

from roidask._validate import (
    check_bool,
    check_choice,
    check_condition_name,
    check_conditions,
    check_fwhm,
    check_input_file,
    check_int,
    check_optional_int,
    check_path,
    check_real,
    check_subject_name,
    check_triplet,
    ttest_defined,
)
from roidask.exceptions import (
    ConditionError,
    CorruptFileError,
    InvalidParameterError,
    RoidaskTypeError,
    UnreadableFileError,
)


# -- paths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["bold.nii.gz", "s3://bucket/bold.nii.gz"])
def test_check_path_accepts_str_and_path_like(tmp_path, value):
    assert check_path(value, "img") == value
    assert check_path(tmp_path, "out") == tmp_path


@pytest.mark.parametrize(
    ("value", "got"),
    [(None, "NoneType"), (123, "int"), (b"bold.nii.gz", "bytes"), (["a.nii"], "list")],
)
def test_check_path_refuses_what_is_not_a_path(value, got):
    with pytest.raises(RoidaskTypeError) as info:
        check_path(value, "out")
    assert str(info.value) == f"out: expected a path (str or os.PathLike), got {got}"
    assert info.value.param == "out"


@pytest.mark.parametrize("value", ["", "  "])
def test_check_path_refuses_an_empty_path(value):
    with pytest.raises(InvalidParameterError, match=r"^manifest: expected a path, got '\s*'$"):
        check_path(value, "manifest")


# -- input files -------------------------------------------------------------------------------
def test_check_input_file_accepts_a_readable_file(tmp_path):
    path = tmp_path / "bold.nii.gz"
    path.write_bytes(b"x")
    assert check_input_file(str(path), "bold") == path


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: None, UnreadableFileError, r"^mask_img .*/mask\.nii\.gz: no such mask image$"),
        (
            lambda p: p.mkdir(),
            UnreadableFileError,
            r"^mask_img .*/mask\.nii\.gz: is a folder; expected a mask image$",
        ),
        (
            lambda p: p.write_bytes(b""),
            CorruptFileError,
            r"^mask_img .*/mask\.nii\.gz: is empty \(0 bytes\); expected a mask image$",
        ),
    ],
    ids=["missing", "folder", "empty"],
)
def test_check_input_file_names_what_is_wrong(tmp_path, make, error, message):
    path = tmp_path / "mask.nii.gz"
    make(path)
    with pytest.raises(error, match=message) as info:
        check_input_file(path, "mask_img", what="mask image")
    assert info.value.param == "mask_img"


CHECK = """
import sys
from roidask._validate import check_input_file
from roidask.exceptions import UnreadableFileError
try:
    check_input_file(sys.argv[1], "labels", what="labels file")
except UnreadableFileError as exc:
    print(type(exc).__name__, exc.param, exc, sep="|")
"""


def test_check_input_file_permission_denied(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("labels chunks\nface 0\n")
    path.chmod(0o000)
    cmd = unprivileged([sys.executable, "-c", CHECK, path])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == (
        f"UnreadableFileError|labels|labels {path}: permission denied (the labels file is not "
        "readable by this user)"
    ), out.stderr


# -- parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_bool(1, "plots"), r"^plots: expected True or False, got 1$"),
        (
            lambda: check_int(0, "threads_per_worker", minimum=1),
            r"^threads_per_worker: expected an integer >= 1, got 0$",
        ),
        (lambda: check_int(True, "n"), r"^n: expected an integer, got True$"),
        (
            lambda: check_int(10**20, "dilation_iterations", minimum=0, maximum=10_000),
            r"^dilation_iterations: expected an integer >= 0 and <= 10000, got 10{20}$",
        ),
        (
            lambda: check_optional_int(-1, "box_max_bytes", minimum=0, meaning="bytes"),
            r"^box_max_bytes: expected an integer >= 0 \(bytes\), got -1$",
        ),
        (
            lambda: check_real(0.0, "tr_s", positive=True, unit="seconds"),
            r"^tr_s: expected a positive finite number of seconds, got 0\.0$",
        ),
        (
            lambda: check_real(float("nan"), "fwhm", minimum=0),
            r"^fwhm: expected a finite number >= 0, got nan$",
        ),
        (
            lambda: check_choice("two-sided", "test", ["student", "welch"]),
            r"^test: expected one of \['student', 'welch'\], got 'two-sided'$",
        ),
        (
            lambda: check_triplet((1, 2), "voxel_size_mm", integer=False),
            r"^voxel_size_mm: expected three positive numbers \(x, y, z\), got \(1, 2\)$",
        ),
        (
            lambda: check_subject_name("../x"),
            r"^subject: '\.\./x' is not a valid subject name",
        ),
        (
            lambda: check_subject_name("sub-ü"),
            r"^subject: 'sub-ü' is not a valid subject name; expected ASCII letters, digits",
        ),
        (
            lambda: check_subject_name("zarr.json"),
            r"^subject: 'zarr\.json' is the name of a store's own metadata file",
        ),
        (
            lambda: check_condition_name(3),
            r"^condition: expected one condition name \(str\), got 3$",
        ),
    ],
)
def test_parameter_messages(call, message):
    with pytest.raises(InvalidParameterError, match=message) as info:
        call()
    assert info.value.param == message[1:].split(":")[0]


def test_valid_values_come_back_canonical():
    assert check_int(np.int64(3), "n") == 3 and type(check_int(np.int64(3), "n")) is int
    assert check_real(2, "tr_s", positive=True) == 2.0
    assert check_triplet([1, 2, 3], "box", integer=True) == (1, 2, 3)
    assert check_bool(np.bool_(True), "plots") is True
    assert check_optional_int(None, "n") is None


def test_check_conditions():
    labels = np.array(["face", "house", "face", "rest", "house"])
    names, index, codes = check_conditions(["face", "house"], labels, param="contrast")
    assert names == ["face", "house"]
    np.testing.assert_array_equal(index, [0, 1, 2, 4])
    np.testing.assert_array_equal(codes, [0, 1, 0, 1])
    with pytest.raises(ConditionError, match=r"^contrast: unknown condition\(s\) \['cat'\]"):
        check_conditions(["face", "cat"], labels, param="contrast")
    with pytest.raises(InvalidParameterError, match=r"^contrast: expected a list or tuple"):
        check_conditions("face", labels, param="contrast")
    with pytest.raises(ConditionError, match=r"at least 3 volumes.*'face' has 2"):
        check_conditions(["face"], labels, param="conditions", min_count=3)
    for empty in ([], (), np.array([], dtype=str)):
        with pytest.raises(InvalidParameterError, match=r"^conditions: expected at least one"):
            check_conditions(empty, labels, param="conditions")


@pytest.mark.parametrize("test", ["student", "welch"])
def test_ttest_defined_where_scipy_gives_a_t(test):
    """The volumes each two-sample t-test needs: scipy's ttest_ind gives a finite t on
    random data exactly where ttest_defined says (Student's: 1 of each and 3 in all;
    Welch's: 2 of each), NaN elsewhere."""
    rng = np.random.default_rng(0)
    for n1 in range(4):
        for n2 in range(4):
            a, b = rng.normal(size=(5, n1)), rng.normal(size=(5, n2))
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                ref = stats.ttest_ind(a, b, axis=1, equal_var=test == "student")
            assert ttest_defined((n1, n2), test) == np.isfinite(ref.statistic).all(), (n1, n2)


@pytest.mark.parametrize(
    ("value", "mm"),
    [
        (None, [0.0, 0.0, 0.0]),
        (6, [6.0, 6.0, 6.0]),
        ((6, None, 3.5), [6.0, 0.0, 3.5]),
        (np.array([1, 2, 3]), [1.0, 2.0, 3.0]),
        (np.float32(2.0), [2.0, 2.0, 2.0]),
    ],
)
def test_check_fwhm_gives_mm_per_axis(value, mm):
    assert check_fwhm(value, maximum=1000).tolist() == mm


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("6", r"^fwhm: expected numbers of mm \(or None\), got '6'$"),
        (True, r"^fwhm: expected numbers of mm \(or None\), got True$"),
        ((6, "6", 6), r"^fwhm: expected numbers of mm \(or None\), got \(6, '6', 6\)$"),
        (np.array(["6"]), r"^fwhm: expected numbers of mm \(or None\), got array"),
        ((1, 2), r"^fwhm: expected a number or 3 numbers \(mm per spatial axis\), got \(1, 2\)$"),
        (2000, r"^fwhm: must be finite, >= 0 and <= 1000 mm, got 2000$"),
    ],
)
def test_check_fwhm_refuses_what_is_not_mm(value, message):
    with pytest.raises(InvalidParameterError, match=message) as info:
        check_fwhm(value, maximum=1000)
    assert info.value.param == "fwhm"


def test_check_choice_refuses_an_array():
    with pytest.raises(
        InvalidParameterError, match=r"^connectivity: expected one of \[6, 18, 26\], got array"
    ):
        check_choice(np.array([6, 6]), "connectivity", [6, 18, 26])
