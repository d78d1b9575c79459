"""roidask._validate: one line naming the parameter, the expectation and the value."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers.api import public_objects
from helpers.privileges import unprivileged
from scipy import stats

from roidask._validate import (
    check_bool,
    check_choice,
    check_condition_name,
    check_conditions,
    check_dtype,
    check_fwhm,
    check_input_file,
    check_int,
    check_name,
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
            lambda: check_real(0, "scl_slope", nonzero=True),
            r"^scl_slope: expected a finite non-zero number, got 0$",
        ),
        (
            lambda: check_dtype("float16", "dtype", accepted=("int16", "float32")),
            r"^dtype: expected one of the data types int16, float32, got 'float16'$",
        ),
        (
            lambda: check_dtype("foo", "dtype", accepted=("int16",)),
            r"^dtype: expected one of the data types int16, got 'foo'$",
        ),
        (
            lambda: check_dtype(True, "dtype", accepted=("bool",)),
            r"^dtype: expected one of the data types bool, got True$",
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
    assert check_dtype(">i2", "dtype", accepted=("int16",)) == np.dtype("=i2")
    assert check_dtype(bool, "dtype", accepted=("bool",)) == np.dtype(bool)
    assert check_name(np.str_("tstat"), "name") == "tstat"
    with pytest.raises(RoidaskTypeError, match=r"^name: expected a name \(str\), got 3$"):
        check_name(3, "name")


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


# -- every public flag is a bool -----------------------------------------------------------------
def _public_flags() -> set[tuple[object, str]]:
    """(function or class, parameter) of every public parameter annotated bool."""
    import inspect

    flags = set()
    for _, obj in public_objects():
        if not callable(obj):
            continue
        try:
            parameters = inspect.signature(obj).parameters.values()
        except (TypeError, ValueError):
            continue
        flags |= {(obj, p.name) for p in parameters if "bool" in str(p.annotation)}
    return flags


def _flag_calls(tmp_path):
    """{(function, parameter): a call giving it 'x'} (dashboard, a bool or an address: 1)."""
    import nibabel as nib
    import pandas as pd

    import roidask
    from roidask import batch, cluster, datasets, io, ops, outputs, pipeline, plotting, runner

    img = io.as_image(nib.Nifti1Image(np.ones((4, 4, 3), np.float32), np.eye(4)))
    labels = io.as_image(nib.Nifti1Image(np.ones((4, 4, 3), np.int16), np.eye(4)))
    bold = io.as_image(nib.Nifti1Image(np.ones((4, 4, 3, 6), np.float32), np.eye(4)))
    signals = ops.extract_signals(bold, labels)
    out, x = tmp_path / "out", "x"
    subject = {"bold": None, "labels": None, "store": None, "subject": None, "mask": "m.nii"}
    subject |= {"out": out, "params": roidask.PipelineParams()}
    absent = tmp_path.parent / "absent"  # never read: the flags are checked first
    specs = [batch.SubjectSpec("01", (absent / "b.nii",), (absent / "l.txt",), absent / "m.nii")]
    return {
        (io.as_image, "stored"): lambda: io.as_image(img, stored=x),
        (io.bold_from_nifti, "scaled"): lambda: io.bold_from_nifti("b.nii", scaled=x),
        (io.convert, "overwrite"): lambda: io.convert("b.nii", labels=None, out=out, overwrite=x),
        (io.convert, "progress"): lambda: io.convert("b.nii", labels=None, out=out, progress=x),
        (io.to_nifti, "overwrite"): lambda: io.to_nifti(img, out / "o.nii", overwrite=x),
        (io.write_nifti, "overwrite"): lambda: io.write_nifti(
            np.zeros((2, 2, 2)), out / "o.nii", affine=np.eye(4), overwrite=x
        ),
        (io.write_image, "overwrite"): lambda: io.write_image(
            img, out, subject="s", name="m", overwrite=x
        ),
        (io.list_subjects, "include_incomplete"): lambda: io.list_subjects(
            out, include_incomplete=x
        ),
        (io.write_roi_table, "overwrite"): lambda: io.write_roi_table(
            pd.DataFrame(columns=io.tables.ROI_TABLE_COLUMNS), out / "r.tsv", overwrite=x
        ),
        (io.write_signals_tsv, "overwrite"): lambda: io.write_signals_tsv(
            signals, out / "s.tsv", overwrite=x
        ),
        (ops.clip_logp, "nan_to_zero"): lambda: ops.clip_logp(img, nan_to_zero=x),
        (ops.threshold_img, "inclusive"): lambda: ops.threshold_img(img, threshold=1, inclusive=x),
        (ops.threshold_img, "binarize"): lambda: ops.threshold_img(img, threshold=1, binarize=x),
        (ops.extract_signals, "detrend"): lambda: ops.extract_signals(bold, labels, detrend=x),
        (ops.clean_signals, "detrend"): lambda: ops.clean_signals(signals, detrend=x),
        (ops.clean_signals, "by_run"): lambda: ops.clean_signals(signals, by_run=x),
        (ops.ttest_img, "equal_var"): lambda: ops.ttest_img(bold, equal_var=x),
        (ops.permuted_ttest_1samp, "two_sided"): lambda: ops.permuted_ttest_1samp(
            [img] * 3, two_sided=x
        ),
        (ops.permuted_ttest_1samp, "exhaustive"): lambda: ops.permuted_ttest_1samp(
            [img] * 3, exhaustive=x
        ),
        (ops.write_atlas, "overwrite"): lambda: ops.write_atlas(
            labels, out / "a.nii", overwrite=x
        ),
        (pipeline.compute, "progress"): lambda: pipeline.compute(progress=x),
        (pipeline.compute, "local"): lambda: pipeline.compute(local=x),
        (pipeline.roi_pipeline, "progress"): lambda: pipeline.roi_pipeline(
            "b.nii", mask_img="m.nii", progress=x
        ),
        (runner.run_subject, "plots"): lambda: runner.run_subject(**subject, plots=x),
        (runner.run_subject, "overwrite"): lambda: runner.run_subject(**subject, overwrite=x),
        (runner.run_subject, "progress"): lambda: runner.run_subject(**subject, progress=x),
        (runner.check_run, "overwrite"): lambda: runner.check_run(**subject, overwrite=x),
        (runner.check_run, "read"): lambda: runner.check_run(**subject, read=x),
        (batch.run_batch, "plots"): lambda: batch.run_batch(specs, out, plots=x),
        (batch.run_batch, "progress"): lambda: batch.run_batch(specs, out, progress=x),
        (batch.run_batch, "study"): lambda: batch.run_batch(specs, out, study=x),
        (batch.run_batch, "check_inputs"): lambda: batch.run_batch(specs, out, check_inputs=x),
        (batch.check_batch_folder, "study"): lambda: batch.check_batch_folder(out, specs, study=x),
        (batch.GroupPermutation, "two_sided"): lambda: batch.GroupPermutation(two_sided=x),
        (outputs.prepare_output, "overwrite"): lambda: outputs.prepare_output(out, overwrite=x),
        (outputs.write_results, "plots"): lambda: outputs.write_results(None, out, plots=x),
        (outputs.write_results, "overwrite"): lambda: outputs.write_results(
            None, out, overwrite=x
        ),
        (datasets.fetch_haxby, "progress"): lambda: datasets.fetch_haxby(data_dir=out, progress=x),
        (datasets.fetch_haxby, "keep_archive"): lambda: datasets.fetch_haxby(
            data_dir=out, keep_archive=x
        ),
        (datasets.make_synthetic_subject, "hrf"): lambda: datasets.make_synthetic_subject(
            out, hrf=x
        ),
        (datasets.make_synthetic_subject, "overwrite"): lambda: datasets.make_synthetic_subject(
            out, overwrite=x
        ),
        (datasets.make_synthetic_subject, "progress"): lambda: datasets.make_synthetic_subject(
            out, progress=x
        ),
        (datasets.make_synthetic_dataset, "overwrite"): lambda: datasets.make_synthetic_dataset(
            out, n_subjects=1, overwrite=x
        ),
        (datasets.make_synthetic_dataset, "progress"): lambda: datasets.make_synthetic_dataset(
            out, n_subjects=1, progress=x
        ),
        (cluster.get_client, "processes"): lambda: cluster.get_client(processes=x).__enter__(),
        (cluster.get_client, "dashboard"): lambda: cluster.get_client(dashboard=1).__enter__(),
        (cluster.check_client_options, "processes"): lambda: cluster.check_client_options(
            processes=x
        ),
        (cluster.jobqueue_cluster, "dashboard"): lambda: cluster.jobqueue_cluster(
            "slurm", cores=1, memory="1GiB", walltime="00:10:00", dashboard=1
        ),
        (plotting.plot_ortho, "colorbar"): lambda: plotting.plot_ortho(img, colorbar=x),
        (plotting.plot_stat_map, "colorbar"): lambda: plotting.plot_stat_map(
            img, None, colorbar=x
        ),
    }


def test_every_public_flag_refuses_what_is_not_a_bool(tmp_path):
    """Flags were checked here and there: ``bold_from_nifti(scaled="x")``,
    ``convert(progress="x")``, ``to_nifti(overwrite="x")`` and 30 more took a string as
    true while ``ttest_img(equal_var="yes")`` was refused. Every public parameter
    annotated bool is listed here (a new one must be added), and each refuses a value
    that is not True or False with one line, before it reads, writes or starts anything."""
    calls = _flag_calls(tmp_path)
    assert _public_flags() <= set(calls)  # and check_run, prepare_output, write_results
    wrong = []
    for (function, param), call in calls.items():
        want = "expected True, False or an address" if param == "dashboard" else "expected True or"
        try:
            call()
        except InvalidParameterError as exc:
            if exc.param == param and str(exc).startswith(f"{param}: {want}"):
                continue
            wrong.append(f"{function.__qualname__}({param}=...): {exc}")
        else:
            wrong.append(f"{function.__qualname__}({param}=...): accepted")
    assert wrong == []
    assert list(tmp_path.iterdir()) == []
