"""Parameter checks shared by every public function (one home, as nilearn's param_validation).

Each checker takes the value and the parameter's name, returns the value in its
canonical type, and raises :class:`~roidask.exceptions.InvalidParameterError`
(or :class:`~roidask.exceptions.ConditionError`) whose message names the
parameter, what was expected and the value given. Input files are checked by
:func:`check_input_file` before anything reads them.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from roidask.exceptions import (
    ConditionError,
    CorruptFileError,
    InvalidParameterError,
    RoidaskTypeError,
    UnreadableFileError,
)

__all__ = [
    "BIDS_LABEL_RE",
    "NO_CONDITION",
    "SUBJECT_NAME_RE",
    "TTESTS",
    "check_bids_label",
    "check_bool",
    "check_choice",
    "check_condition_name",
    "check_conditions",
    "check_contrast",
    "check_dtype",
    "check_fwhm",
    "check_input_file",
    "check_int",
    "check_name",
    "check_optional_int",
    "check_path",
    "check_real",
    "check_subject_name",
    "check_triplet",
    "check_ttest_counts",
    "only_applies",
    "ttest_defined",
    "volume_conditions",
]

#: Subject names: ASCII letters, digits, '.', '_' and '-', not starting with '.' or '-'
#: (store group names and ``sub-<id>`` output folders alike).
#: The condition of every volume of a series read without labels.
NO_CONDITION = "unknown"
SUBJECT_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")

#: BIDS labels (``task-<label>``): letters and digits.
BIDS_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def only_applies(names: Sequence[str], what: str) -> str:
    """The head of the message of options given where they do not apply:
    ``"a: applies only to WHAT"``, ``"a, b: apply only to WHAT"``."""
    verb = "applies" if len(names) == 1 else "apply"
    return f"{', '.join(names)}: {verb} only to {what}"


def check_bool(value: Any, param: str) -> bool:
    """``value`` as a bool; only True/False (or numpy bools) are accepted."""
    if not isinstance(value, bool | np.bool_):
        raise InvalidParameterError(f"{param}: expected True or False, got {value!r}", param=param)
    return bool(value)


def check_name(value: Any, param: str, *, what: str = "a name (str)") -> str:
    """``value`` as a name (a str: a variable's, an image's).

    Raises
    ------
    RoidaskTypeError
        ``value`` is not a str.
    """
    if not isinstance(value, str):
        raise RoidaskTypeError(f"{param}: expected {what}, got {value!r}", param=param)
    return str(value)


def check_int(
    value: Any,
    param: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    meaning: str = "",
) -> int:
    """``value`` as an int (bools refused), within ``minimum`` and ``maximum`` if given."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral)
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        want = "an integer" if minimum is None else f"an integer >= {minimum}"
        if maximum is not None:
            want += f" and <= {maximum}" if minimum is not None else f" <= {maximum}"
        extra = f" ({meaning})" if meaning else ""
        raise InvalidParameterError(f"{param}: expected {want}{extra}, got {value!r}", param=param)
    return int(value)


def check_optional_int(
    value: Any, param: str, *, minimum: int | None = None, meaning: str = ""
) -> int | None:
    """As :func:`check_int`, with ``None`` passed through."""
    return None if value is None else check_int(value, param, minimum=minimum, meaning=meaning)


def check_real(
    value: Any,
    param: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
    nonzero: bool = False,
    unit: str = "",
) -> float:
    """``value`` as a finite float, ``> 0`` if ``positive``, ``!= 0`` if ``nonzero``,
    ``>= minimum`` if given."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and bool(np.isfinite(float(value)))
    )
    if ok and positive:
        ok = value > 0
    if ok and nonzero:
        ok = value != 0
    if ok and minimum is not None:
        ok = value >= minimum
    if not ok:
        if positive:
            want = "a positive finite number"
        elif nonzero:
            want = "a finite non-zero number"
        elif minimum is not None:
            want = f"a finite number >= {minimum:g}"
        else:
            want = "a finite number"
        of = f" of {unit}" if unit else ""
        raise InvalidParameterError(f"{param}: expected {want}{of}, got {value!r}", param=param)
    return float(value)


def check_fwhm(value: Any, param: str = "fwhm", *, maximum: float) -> np.ndarray:
    """A smoothing FWHM in mm, per spatial axis (x, y, z), 0 where there is none.

    ``value`` is ``None`` (no smoothing), one number (every axis) or three numbers or
    ``None`` (one per axis), each finite, ``>= 0`` and ``<= maximum``. Strings and
    bools are refused, not converted.
    """
    if value is None:
        return np.zeros(3)
    values = np.asarray(value if isinstance(value, np.ndarray) else [value], dtype=object).ravel()
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.size != 3:
        raise InvalidParameterError(
            f"{param}: expected a number or 3 numbers (mm per spatial axis), got {value!r}",
            param=param,
        )
    if not all(
        v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_))
        for v in values
    ):
        raise InvalidParameterError(
            f"{param}: expected numbers of mm (or None), got {value!r}", param=param
        )
    mm = np.asarray([0.0 if v is None else float(v) for v in values])
    if not np.all(np.isfinite(mm)) or np.any(mm < 0) or np.any(mm > maximum):
        raise InvalidParameterError(
            f"{param}: must be finite, >= 0 and <= {maximum:g} mm, got {value!r}", param=param
        )
    return mm


def check_choice(value: Any, param: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = list(choices)
    try:
        known = not isinstance(value, bool) and value in choices
    except (TypeError, ValueError):  # an array (no truth value of its comparisons)
        known = False
    if not known:
        raise InvalidParameterError(
            f"{param}: expected one of {choices}, got {value!r}", param=param
        )
    return value


def check_dtype(value: Any, param: str, *, accepted: Sequence[str]) -> np.dtype:
    """``value`` (a numpy type or its name) as a numpy dtype in native byte order, one of
    the types named in ``accepted`` (``"int16"``, ``"float32"``...).

    Raises
    ------
    InvalidParameterError
        Not a data type numpy knows (``"foo"``, ``1``), or not one of ``accepted``.
    """
    try:
        dtype = None if value is None or isinstance(value, bool) else np.dtype(value)
    except (TypeError, ValueError):  # "foo", 1, [("a", int)] of another shape...
        dtype = None
    if dtype is None or dtype.name not in accepted or dtype.fields is not None:
        raise InvalidParameterError(
            f"{param}: expected one of the data types {', '.join(accepted)}, got {value!r}",
            param=param,
        )
    return dtype.newbyteorder("=")


def check_triplet(value: Any, param: str, *, integer: bool) -> tuple:
    """Three positive numbers (integers if ``integer``), one per spatial axis."""
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    kind = numbers.Integral if integer else numbers.Real
    if len(items) != 3 or not all(
        isinstance(v, kind)
        and not isinstance(v, bool)
        and np.isfinite(float(v))  # type: ignore[arg-type]
        and float(v) > 0  # type: ignore[arg-type]
        for v in items
    ):
        want = "positive integers" if integer else "positive numbers"
        raise InvalidParameterError(
            f"{param}: expected three {want} (x, y, z), got {value!r}", param=param
        )
    return tuple(int(v) if integer else float(v) for v in items)


#: Longest subject name: file systems allow 255 bytes per name, and temporary siblings
#: (``.<name>.roidask-tmp-<pid>-<hex>``) and folder names (``sub-<name>``) add to it.
SUBJECT_NAME_MAX_BYTES = 200


def check_bids_label(value: Any, param: str) -> str:
    """A BIDS label, as in ``task-<label>``: letters and digits."""
    if not isinstance(value, str) or not BIDS_LABEL_RE.match(value):
        raise InvalidParameterError(
            f"{param}: expected a BIDS label (ASCII letters and digits, as in task-<label>), "
            f"got {value!r}",
            param=param,
        )
    return value


def check_subject_name(subject: Any, param: str = "subject") -> str:
    """A subject name usable as a store group and an output folder name."""
    if not isinstance(subject, str) or not SUBJECT_NAME_RE.match(subject):
        raise InvalidParameterError(
            f"{param}: {subject!r} is not a valid subject name; expected ASCII letters, digits, "
            "'.', '_' or '-', not starting with '.' or '-' (e.g. 'sub-01')",
            param=param,
        )
    if len(subject.encode()) > SUBJECT_NAME_MAX_BYTES:
        raise InvalidParameterError(
            f"{param}: a subject name of {len(subject.encode())} bytes is too long for a "
            f"folder name; expected at most {SUBJECT_NAME_MAX_BYTES}",
            param=param,
        )
    if subject.lower() == "zarr.json":
        raise InvalidParameterError(
            f"{param}: {subject!r} is the name of a store's own metadata file; choose "
            "another subject name (e.g. 'sub-01')",
            param=param,
        )
    return subject


# -- conditions ----------------------------------------------------------------------------
def volume_conditions(bold, param: str = "img") -> np.ndarray:
    """The per-volume condition labels of a BOLD image, as a numpy str array."""
    if "condition" not in bold.coords or bold["condition"].dims != ("time",):
        raise ConditionError(
            f"{param}: the BOLD series has no 'condition' coordinate along time; load it with "
            "labels (roidask.io.bold_from_nifti(..., labels=...)) to use conditions",
            param=param,
        )
    # via object: numpy's StringDType (a variable-length zarr string, as earlier converts
    # wrote, read by plain xarray) does not cast to fixed-width str
    return np.asarray(bold["condition"].values).astype(object).astype(str)


def check_condition_name(condition: Any, param: str = "condition") -> str:
    """One condition name (str)."""
    if isinstance(condition, np.str_):
        condition = str(condition)
    if not isinstance(condition, str):
        raise InvalidParameterError(
            f"{param}: expected one condition name (str), got {condition!r}", param=param
        )
    return condition


def check_conditions(
    conditions: Sequence[str] | Any,
    labels: np.ndarray,
    *,
    param: str,
    min_count: int = 1,
    exact: int | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Validate condition names against per-volume ``labels`` (the one condition checker).

    Parameters
    ----------
    conditions : sequence of str
        Distinct condition names, at least one.
    labels : ndarray of str
        The condition of every volume (:func:`volume_conditions`).
    param : str
        Parameter name for messages (``"contrast"``, ``"conditions"``).
    min_count : int
        Volumes each condition needs (2 for a one-sample t-test; the two-sample
        tests' rule is :func:`check_contrast`'s).
    exact : int, optional
        Number of names required (2 for a contrast).

    Returns
    -------
    names : list of str
    index : ndarray of int
        Indices of the volumes of these conditions, in time order.
    codes : ndarray of int
        For each of those volumes, the position of its condition in ``names``.
    """
    if isinstance(conditions, str) or not np.iterable(conditions):
        what = f"the string {conditions!r}" if isinstance(conditions, str) else repr(conditions)
        raise InvalidParameterError(
            f"{param}: expected a list or tuple of condition names, got {what}", param=param
        )
    names = [str(c) if isinstance(c, np.str_) else c for c in conditions]
    if not names:
        raise InvalidParameterError(
            f"{param}: expected at least one condition name, got {list(conditions)!r}",
            param=param,
        )
    if exact is not None and len(names) != exact:
        raise InvalidParameterError(
            f"{param}: expected {exact} condition names, got {list(conditions)!r}", param=param
        )
    bad = [c for c in names if not isinstance(c, str)]
    if bad:
        raise InvalidParameterError(
            f"{param}: condition names must be strings, got {bad!r} in {names!r}", param=param
        )
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise InvalidParameterError(
            f"{param}: condition(s) {dupes} given more than once", param=param
        )
    known = sorted(set(labels.tolist()))
    unknown = [c for c in names if c not in known]
    if unknown and known == [NO_CONDITION]:  # read without labels
        raise ConditionError(
            f"{param}: the image has no condition labels (every volume's condition is "
            f"{NO_CONDITION!r}), so no {' or '.join(map(repr, unknown))} volumes; give "
            "them with labels=PATH, a labels.txt or one events.tsv per run "
            "(bold_from_nifti(..., labels=...), convert(..., labels=...))",
            param=param,
        )
    if unknown:
        raise ConditionError(
            f"{param}: unknown condition(s) {unknown}; the data has {known}", param=param
        )
    counts = {c: int(np.count_nonzero(labels == c)) for c in names}
    few = {c: n for c, n in counts.items() if n < min_count}
    if few:
        detail = ", ".join(f"{c!r} has {n}" for c, n in few.items())
        raise ConditionError(
            f"{param}: each condition needs at least {min_count} volumes for this test; "
            f"{detail} volume(s)",
            param=param,
        )
    index = np.flatnonzero(np.isin(labels, names))
    lookup = {c: k for k, c in enumerate(names)}
    codes = np.asarray([lookup[c] for c in labels[index]], dtype=np.int64)
    return names, index, codes


# -- two-sample t-tests: the volumes each needs ------------------------------------------------
#: The two-sample t-tests (``test`` of the pipeline; ``equal_var=True`` is Student's).
TTESTS = ("student", "welch")

#: What each test needs, in words (the rule of :func:`ttest_defined`).
_TTEST_NEEDS = {
    "student": ("Student's t-test", "at least 1 volume of each condition and 3 in all"),
    "welch": ("Welch's t-test", "at least 2 volumes of each condition"),
}


def ttest_defined(counts: Iterable[int], test: str) -> bool:
    """Whether the two-sample t-test ``test`` is defined with ``counts = (n1, n2)`` volumes.

    As :func:`scipy.stats.ttest_ind`: Student's test (``"student"``) pools the
    variance of both conditions (``df = n1 + n2 - 2``), so a condition of a single
    volume (its mean; no deviation) is enough with 3 volumes in all; Welch's
    (``"welch"``) estimates each condition's variance (``n - 1`` divides), so it
    needs 2 volumes of each (scipy gives NaN with fewer).

    Parameters
    ----------
    counts : iterable of 2 int
        The volumes of each of the two conditions.
    test : {"student", "welch"}
        The test.

    Returns
    -------
    bool
        True where scipy gives a finite t for non-constant data.
    """
    n1, n2 = (int(n) for n in counts)
    if test == "student":
        return min(n1, n2) >= 1 and n1 + n2 >= 3
    return min(n1, n2) >= 2


def _test_setting(test: str, test_param: str) -> str:
    if test_param == "equal_var":
        return f"equal_var={test == 'student'}"
    return f"{test_param}={test!r}"


def check_ttest_counts(
    counts: dict[str, int],
    test: str,
    *,
    param: str,
    test_param: str = "test",
    holder: str = "the data hold",
) -> None:
    """Refuse volume counts with which the two-sample t-test ``test`` is not defined.

    Parameters
    ----------
    counts : dict of str to int
        The volumes of each of the two conditions.
    test : {"student", "welch"}
        The test (:func:`ttest_defined`).
    param : str
        Parameter named by the message (``"contrast"``, ``"roi_definition"``).
    test_param : str
        The parameter choosing the test: ``"test"`` (``test='welch'``) or
        ``"equal_var"`` (``equal_var=False``).
    holder : str
        What holds the volumes, in the message (``"the data hold"``).

    Raises
    ------
    ConditionError
        Naming ``param``, the test, the counts found and what each test needs.
    """
    if ttest_defined(counts.values(), test):
        return
    (c1, n1), (c2, n2) = counts.items()
    found = f"{n1} volume{'' if n1 == 1 else 's'} of {c1!r} and {n2} of {c2!r}"
    other = TTESTS[1 - TTESTS.index(test)]
    (name, needs), (other_name, other_needs) = _TTEST_NEEDS[test], _TTEST_NEEDS[other]
    raise ConditionError(
        f"{param}: {holder} {found}; {name} ({_test_setting(test, test_param)}) needs "
        f"{needs} ({other_name}, {_test_setting(other, test_param)}: {other_needs})",
        param=param,
    )


def check_contrast(
    contrast: Sequence[str] | Any,
    labels: np.ndarray,
    *,
    test: str,
    param: str = "contrast",
    test_param: str = "test",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Validate the two conditions of a two-sample t-test (``test``) against ``labels``.

    :func:`check_conditions` with two names, then :func:`check_ttest_counts`.

    Returns
    -------
    names, index, codes
        As :func:`check_conditions`.
    """
    names, index, codes = check_conditions(contrast, labels, param=param, exact=2)
    counts = np.bincount(codes, minlength=2)
    check_ttest_counts(
        dict(zip(names, counts.tolist(), strict=True)), test, param=param, test_param=test_param
    )
    return names, index, codes


# -- paths ---------------------------------------------------------------------------------
def check_path(value: Any, param: str, *, what: str = "a path") -> str | os.PathLike:
    """``value`` if it names a file or folder: a non-empty str or an :class:`os.PathLike`
    (``pathlib.Path``). What :class:`~pathlib.Path` would refuse with a bare
    :class:`TypeError` (``None``, a number, ``bytes``) is refused naming ``param``.

    Raises
    ------
    RoidaskTypeError
        ``value`` is not a str or an os.PathLike.
    InvalidParameterError
        ``value`` is the empty string (which :class:`~pathlib.Path` reads as the
        current folder).
    """
    if isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):
        return value
    if not isinstance(value, str):
        raise RoidaskTypeError(
            f"{param}: expected {what} (str or os.PathLike), got {type(value).__name__}",
            param=param,
        )
    if not value.strip():
        raise InvalidParameterError(f"{param}: expected {what}, got {value!r}", param=param)
    return value


# -- input files -----------------------------------------------------------------------------
def check_input_file(path: str | os.PathLike, param: str, *, what: str = "file") -> Path:
    """An existing, readable, non-empty regular file (checked before anything reads it).

    Raises
    ------
    UnreadableFileError
        Missing, a folder, or not readable by this process (permissions).
    CorruptFileError
        Empty (0 bytes).
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(f"{param} {path}: no such {what}", param=param)
    if path.is_dir():
        raise UnreadableFileError(f"{param} {path}: is a folder; expected a {what}", param=param)
    try:
        with open(path, "rb") as fh:
            first = fh.read(1)
    except PermissionError:
        raise UnreadableFileError(
            f"{param} {path}: permission denied (the {what} is not readable by this user)",
            param=param,
        ) from None
    except OSError as exc:
        raise UnreadableFileError(
            f"{param} {path}: cannot be read ({exc.strerror or exc})", param=param
        ) from None
    if not first:
        raise CorruptFileError(
            f"{param} {path}: is empty (0 bytes); expected a {what}", param=param
        )
    return path
