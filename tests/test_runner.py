"""run_subject: the destination checked first; the temporary store of a cluster run is a
locked sibling of the output that the next command removes if this one is killed."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from helpers.lazy import voxel_reads

from roidask.exceptions import OutputError, RoidaskTypeError
from roidask.pipeline import PipelineParams
from roidask.runner import run_subject


def test_the_destination_is_checked_before_any_voxel_is_read(haxby, tmp_path):
    with voxel_reads() as reads, pytest.raises(OutputError, match=r"parent folder .* does not"):
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=tmp_path / "results" / "subj2",
                    params=PipelineParams())  # fmt: skip
    assert reads == []


def test_a_nifti_zarr_run_is_read_as_its_nifti(haxby, tmp_path):
    """(reference, ours): the same run as .nii.gz and as .nii.zarr (README: run accepts
    both), with no --chunks: the same maps and signals."""
    from roidask.io import as_image, to_nifti

    zarr_run = to_nifti(as_image(haxby.bold), tmp_path / "bold.nii.zarr")
    results = {}
    for name, bold in (("nii", haxby.bold), ("zarr", zarr_run)):
        results[name] = run_subject(bold=[bold], labels=[haxby.labels], store=None,
                                    subject=None, mask=haxby.mask, out=tmp_path / name,
                                    params=PipelineParams(), plots=False)  # fmt: skip
    ref, ours = (xr.open_zarr(tmp_path / n / "results.zarr") for n in ("nii", "zarr"))
    for var in ("tstat", "logp", "atlas", "signals"):
        np.testing.assert_array_equal(ours[var].values, ref[var].values)


def test_a_subject_its_batch_no_longer_wants_never_replaces_the_output(haxby, tmp_path):
    """A task left running by a killed batch (its client gone): asked again before its
    folder replaces the next batch's, it stops there, leaving that output as it was."""
    from helpers.files import tree

    out = tmp_path / "sub-01"
    kwargs = dict(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                  mask=haxby.mask, out=out, plots=False, overwrite=True)  # fmt: skip
    run_subject(params=PipelineParams(), **kwargs)  # the next batch's output
    before = tree(tmp_path)
    asked = []

    def batch_wants_it():
        asked.append(len(asked))
        if len(asked) > 1:  # wanted when computed, no longer when committing
            raise RuntimeError("not written: its batch was cancelled or lost its client")

    with pytest.raises(RuntimeError, match="not written"):
        run_subject(params=PipelineParams(fwhm=5.0), before_write=batch_wants_it, **kwargs)
    assert asked == [0, 1] and tree(tmp_path) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_made_at_out_while_the_run_ran_is_left_as_it_is(haxby, tmp_path, overwrite):
    """``out`` was absent when checked; the user makes it, with their files, before the run
    commits: the run fails with one line and their files are all there."""
    from helpers.files import tree

    out = tmp_path / "subj2"

    calls = []

    def user_makes_out():  # the second call: just before the folder is moved into place
        calls.append(len(calls))
        if len(calls) < 2:
            return
        out.mkdir()
        (out / "mine").mkdir()
        (out / "mine" / "notes.txt").write_text("precious")

    with pytest.raises(OutputError, match=r"created or changed while this command ran"):
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=out, params=PipelineParams(), plots=False,
                    overwrite=overwrite, before_write=user_makes_out)  # fmt: skip
    assert calls == [0, 1]
    assert tree(tmp_path) == {
        "subj2": None,
        "subj2/mine": None,
        "subj2/mine/notes.txt": b"precious",
    }


def test_a_study_node_its_batch_no_longer_wants_is_not_written(haxby, tmp_path):
    from roidask.outputs.study import STUDY_NAME, SubjectNode, prepare_study

    study = prepare_study(tmp_path / STUDY_NAME)
    asked = []

    def batch_wants_it():
        asked.append(len(asked))
        if len(asked) > 2:  # lost once the folder was written: not the node
            raise RuntimeError("not written: its batch was cancelled or lost its client")

    with pytest.raises(RuntimeError, match="not written"):
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=tmp_path / "sub-01", plots=False,
                    params=PipelineParams(), before_write=batch_wants_it,
                    study_node=SubjectNode(study, "sub-01", "01", "f"))  # fmt: skip
    assert (tmp_path / "sub-01" / "tstat.nii.gz").is_file()
    assert not (study / "sub-01").exists()


def test_the_inputs_are_computed_from_absolute_paths(haxby, tmp_path, monkeypatch):
    # a dask cluster's tasks open them in workers with other working folders
    import shutil

    from roidask import runner

    for f in (haxby.bold, haxby.labels, haxby.mask):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.chdir(tmp_path)
    seen = []

    def stop(bold, labels, mask, *args, **kwargs):
        seen.append((bold, labels, mask))
        raise RuntimeError("enough")

    monkeypatch.setattr(runner, "_run_nifti", stop)
    with pytest.raises(RuntimeError, match="enough"):
        run_subject(bold=["bold.nii.gz"], labels=["labels.txt"], store=None, subject=None,
                    mask="mask.nii.gz", out="out", params=PipelineParams())  # fmt: skip
    ((bold, labels, mask),) = seen
    assert [*bold, *labels, mask] == [tmp_path / n for n in ("bold.nii.gz", "labels.txt",
                                                             "mask.nii.gz")]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [("out", None), ("mask", None), ("bold", [None]), ("labels", 3)],
)
def test_a_path_parameter_that_is_not_a_path_is_named(haxby, tmp_path, name, value):
    args = {"bold": [haxby.bold], "labels": [haxby.labels], "mask": haxby.mask,
            "out": tmp_path / "subj2", name: value}  # fmt: skip
    with pytest.raises(RoidaskTypeError, match=rf"^{name}: expected a path") as info:
        run_subject(store=None, subject=None, params=PipelineParams(), plots=False, **args)
    assert info.value.param == name
    assert list(tmp_path.iterdir()) == []


def test_one_bold_file_and_labels_file_may_be_given_as_paths(haxby, tmp_path):
    result = run_subject(bold=haxby.bold, labels=haxby.labels, store=None, subject=None,
                         mask=haxby.mask, out=tmp_path / "subj2", params=PipelineParams(),
                         plots=False)  # fmt: skip
    assert result.n_rois > 0


def test_params_none_are_the_defaults_as_for_roi_pipeline(haxby, tmp_path):
    """run_subject, check_run and check_subject take params=None as roi_pipeline does:
    the defaults (never an AttributeError)."""
    from roidask.runner import check_run, check_subject

    kwargs = dict(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                  mask=haxby.mask)  # fmt: skip
    check_run(**kwargs, out=tmp_path / "checked", params=None)
    check_subject([haxby.bold], labels=[haxby.labels], mask=haxby.mask, params=None)
    result = run_subject(**kwargs, out=tmp_path / "subj2", params=None, plots=False)
    assert result.params == PipelineParams()
    assert result.n_rois > 0


@pytest.mark.parametrize("params", [{"fwhm": 6}, "defaults"])
def test_params_that_are_not_pipeline_params_are_refused_before_anything(haxby, tmp_path, params):
    with (
        voxel_reads() as reads,
        pytest.raises(
            RoidaskTypeError, match=r"^params: expected a roidask\.PipelineParams \(e\.g\. "
        ) as info,
    ):
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=tmp_path / "subj2", params=params)  # fmt: skip
    assert info.value.param == "params"
    assert reads == [] and list(tmp_path.iterdir()) == []


def test_check_subject_takes_its_options_by_keyword():
    """The BOLD runs, labels and mask first, positional or by name; the options by keyword."""
    import inspect

    from roidask.runner import check_subject

    parameters = inspect.signature(check_subject).parameters.values()
    assert [p.name for p in parameters if p.kind is not p.KEYWORD_ONLY] == [
        "bold",
        "labels",
        "mask",
    ]
