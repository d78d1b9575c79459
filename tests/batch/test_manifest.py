"""Batch manifests: TSV files and BIDS-like folders, and their one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.files import write_manifest

from roidask.batch import SubjectSpec, read_manifest
from roidask.cli import main
from roidask.exceptions import (
    CorruptFileError,
    InvalidParameterError,
    ManifestError,
    RoidaskError,
    RoidaskTypeError,
)


def test_manifest_tsv_runs_and_relative_paths(tmp_path):
    sub = tmp_path / "study"
    sub.mkdir()
    manifest = write_manifest(
        sub / "manifest.tsv",
        [
            ("01", "d/run1.nii.gz; d/run2.nii.gz", "d/ev1.tsv;d/ev2.tsv", "d/mask.nii.gz"),
            ("sub-02", "/abs/bold.nii", "/abs/labels.txt", "/abs/mask.nii"),
        ],
    )
    specs = read_manifest(manifest)
    assert specs == [
        SubjectSpec(
            "01",
            (sub / "d/run1.nii.gz", sub / "d/run2.nii.gz"),
            (sub / "d/ev1.tsv", sub / "d/ev2.tsv"),
            sub / "d/mask.nii.gz",
        ),
        SubjectSpec(
            "sub-02", (Path("/abs/bold.nii"),), (Path("/abs/labels.txt"),), Path("/abs/mask.nii")
        ),
    ]
    assert [s.out_name for s in specs] == ["sub-01", "sub-02"]
    # an empty mask cell takes --mask
    write_manifest(manifest, [("01", "b.nii.gz", "l.txt", "")])
    (spec,) = read_manifest(manifest, mask=tmp_path / "common_mask.nii.gz")
    assert spec.mask == tmp_path / "common_mask.nii.gz"
    # ... and is refused where no subject would use it (it would be ignored)
    write_manifest(manifest, [("01", "b.nii.gz", "l.txt", "m.nii.gz")])
    with pytest.raises(ManifestError, match=r"^mask .*common_mask.nii.gz: every subject of .*"):
        read_manifest(manifest, mask=tmp_path / "common_mask.nii.gz")


def test_relative_paths_are_made_absolute_for_the_workers(tmp_path, monkeypatch):
    # a worker of a running scheduler resolves a relative path in its own working folder
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(Path("m.tsv"), [("01", "d/b.nii.gz", "d/l.txt", "")])
    (spec,) = read_manifest(manifest, mask="mask.nii.gz")
    assert spec.files == (tmp_path / "d/b.nii.gz", tmp_path / "d/l.txt", tmp_path / "mask.nii.gz")
    made = SubjectSpec("02", (Path("b.nii.gz"),), (Path("l.txt"),), Path("m.nii.gz"))
    assert all(p.is_absolute() for p in made.files)


def test_manifest_bids_folder(tmp_path):
    root = tmp_path / "bids"
    for sub, runs in (("sub-01", 2), ("sub-02", 1)):
        func = root / sub / "func"
        func.mkdir(parents=True)
        for r in range(1, runs + 1):
            (func / f"{sub}_task-faces_run-{r}_bold.nii.gz").write_bytes(b"")
            (func / f"{sub}_task-faces_run-{r}_events.tsv").write_text("onset\tduration\n")
    own = root / "sub-02" / "func" / "sub-02_mask.nii.gz"
    own.write_bytes(b"")
    common = tmp_path / "mask.nii.gz"
    specs = read_manifest(root, mask=common)
    f1 = root / "sub-01" / "func"
    assert specs == [
        SubjectSpec(
            "sub-01",
            (
                f1 / "sub-01_task-faces_run-1_bold.nii.gz",
                f1 / "sub-01_task-faces_run-2_bold.nii.gz",
            ),
            (f1 / "sub-01_task-faces_run-1_events.tsv", f1 / "sub-01_task-faces_run-2_events.tsv"),
            common,
        ),
        SubjectSpec(
            "sub-02",
            (root / "sub-02/func/sub-02_task-faces_run-1_bold.nii.gz",),
            (root / "sub-02/func/sub-02_task-faces_run-1_events.tsv",),
            own,
        ),
    ]
    assert [s.out_name for s in specs] == ["sub-01", "sub-02"]
    with pytest.raises(
        ManifestError, match=r"sub-01: no \*_mask.nii.gz in func/ and no mask for every subject"
    ):
        read_manifest(root)
    # runs in numeric order: run-2 before run-10
    f2 = root / "sub-02" / "func"
    for r in (2, 10):
        (f2 / f"sub-02_task-faces_run-{r}_bold.nii.gz").write_bytes(b"")
        (f2 / f"sub-02_task-faces_run-{r}_events.tsv").write_text("onset\tduration\n")
    runs = [p.name.split("_")[2] for p in read_manifest(root, mask=common)[1].bold]
    assert runs == ["run-1", "run-2", "run-10"]
    (f2 / "sub-02_desc-vt2_mask.nii.gz").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"sub-02: several masks in func/ \(sub-02_desc"):
        read_manifest(root, mask=common)
    (f2 / "sub-02_desc-vt2_mask.nii.gz").unlink()
    (f1 / "sub-01_task-faces_run-2_events.tsv").unlink()
    with pytest.raises(
        ManifestError, match=r"run-2_bold.nii.gz: no matching events file .*run-2_events.tsv"
    ):
        read_manifest(root, mask=common)
    # a subject whose runs are in sessions: never dropped without a word
    (f1 / "sub-01_task-faces_run-2_events.tsv").write_text("onset\tduration\n")
    ses = root / "sub-04" / "ses-1" / "func"
    ses.mkdir(parents=True)
    (ses / "sub-04_ses-1_task-faces_bold.nii.gz").write_bytes(b"")
    want = r"sub-04: has runs in sessions \(ses-1/func/sub-04_ses-1_task-faces_bold.nii.gz\), "
    with pytest.raises(ManifestError, match=want + "which a BIDS-like folder is not read"):
        read_manifest(root, mask=common)
    # ... nor when the subject has runs in func/ too: they are not its only runs
    (root / "sub-04" / "ses-1").rename(f1.parent / "ses-1")
    (root / "sub-04").rmdir()
    with pytest.raises(ManifestError, match=r"sub-01: has runs in sessions \(ses-1/func/"):
        read_manifest(root, mask=common)


def _bids(root: Path, files: dict[str, list[str]]) -> Path:
    """A BIDS-like folder: ``{subject: [file name in its func/, ...]}`` (empty files)."""
    for sub, names in files.items():
        (root / sub / "func").mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / sub / "func" / name).write_bytes(b"")
    return root


def _run(sub: str, task: str = "objects", run: int = 1, ext: str = ".nii.gz") -> list[str]:
    """A run's BOLD file and its events file."""
    stem = f"{sub}_task-{task}_run-{run}"
    return [f"{stem}_bold{ext}", f"{stem}_events.tsv"]


def test_bids_one_run_in_two_files_is_refused(tmp_path):
    """``.nii`` and ``.nii.gz`` of one run (or two spaces of a derivative) would be read as
    two runs: refused with one line naming both."""
    root = _bids(tmp_path / "bids", {"sub-01": [*_run("sub-01"), *_run("sub-01", ext=".nii")]})
    func = root / "sub-01" / "func"
    with pytest.raises(ManifestError, match=rf"^{re.escape(str(func))}: sub-01_task-objects_run-1_"
                       r"bold.nii and sub-01_task-objects_run-1_bold.nii.gz are one run \(their "
                       r"names differ only in their extension\), which would be read twice; "
                       r"keep one$"):  # fmt: skip
        read_manifest(root, mask=tmp_path / "m.nii.gz")
    (func / "sub-01_task-objects_run-1_bold.nii").unlink()
    assert len(read_manifest(root, mask=tmp_path / "m.nii.gz")[0].bold) == 1
    stem = "sub-01_task-objects_run-1"
    _bids(root, {"sub-01": [f"{stem}_space-T1w_desc-preproc_bold.nii.gz"]})
    with pytest.raises(ManifestError, match=r"_run-1_bold.nii.gz and .*space-T1w_desc-preproc_bold"
                       r".nii.gz are one run \(their names differ only in entities of "
                       r"derivatives"):  # fmt: skip
        read_manifest(root, mask=tmp_path / "m.nii.gz")


def test_bids_several_tasks_need_task(tmp_path, capsys):
    """The runs of several tasks are never pooled as one analysis: ``task`` selects one."""
    root = _bids(
        tmp_path / "bids",
        {
            "sub-01": [*_run("sub-01"), *_run("sub-01", run=2), *_run("sub-01", "rest")],
            "sub-02": [
                *_run("sub-02"),
                "sub-02_task-objects_mask.nii.gz",
                "sub-02_task-rest_mask.nii.gz",
            ],
        },
    )
    mask = tmp_path / "m.nii.gz"
    with pytest.raises(ManifestError, match=rf"^manifest {re.escape(str(root))}: BOLD files of 2 "
                       r"tasks \('objects', 'rest'\); a batch analyses one task: pass "
                       r"task=NAME$"):  # fmt: skip
        read_manifest(root, mask=mask)
    specs = read_manifest(root, mask=mask, task="objects")
    assert [[b.name for b in s.bold] for s in specs] == [
        ["sub-01_task-objects_run-1_bold.nii.gz", "sub-01_task-objects_run-2_bold.nii.gz"],
        ["sub-02_task-objects_run-1_bold.nii.gz"],
    ]
    assert [e.name for e in specs[0].labels][1] == "sub-01_task-objects_run-2_events.tsv"
    assert specs[1].mask.name == "sub-02_task-objects_mask.nii.gz"  # not the rest task's
    # sub-02 has no rest run: reported, not left out
    want = r"^manifest: subject 'sub-02': bold: .*sub-02/func has no \*_bold.nii.gz file of task "
    with pytest.raises(ManifestError, match=want + r"'rest' \(its other files"):
        read_manifest(root, mask=mask, task="rest")
    with pytest.raises(ManifestError, match=r"^task: no BOLD file of task 'faces' in .*bids "
                       r"\(tasks found: 'objects', 'rest'\)$"):  # fmt: skip
        read_manifest(root, mask=mask, task="faces")
    with pytest.raises(InvalidParameterError, match=r"^task: expected a BIDS label .*got "
                       r"'task-objects'$"):  # fmt: skip
        read_manifest(root, mask=mask, task="task-objects")
    manifest = write_manifest(tmp_path / "m.tsv", [("01", "b.nii.gz", "l.txt", "m.nii.gz")])
    with pytest.raises(InvalidParameterError, match=r"^task: applies only to a BIDS-like folder"):
        read_manifest(manifest, task="objects")
    # the command line: --task, named as such
    out = tmp_path / "out"
    assert main(["batch", str(root), "--out", str(out), "--mask", str(mask)]) == 2
    assert capsys.readouterr().err.endswith("a batch analyses one task: add --task NAME\n")
    assert main(["batch", str(root), "--out", str(out), "--task", "faces", "--check"]) == 2
    assert capsys.readouterr().err.startswith("roidask: error: --task: no BOLD file of task")
    assert not out.exists()


def test_bids_common_mask_where_every_subject_has_its_own(tmp_path):
    """As with a TSV manifest: ``mask`` that no subject would use is refused."""
    root = _bids(
        tmp_path / "bids", {s: [*_run(s), f"{s}_mask.nii.gz"] for s in ("sub-01", "sub-02")}
    )
    mask = tmp_path / "m.nii.gz"
    with pytest.raises(ManifestError, match=rf"^mask {re.escape(str(mask))}: every subject of "
                       rf"{re.escape(str(root))} has its own mask \(a \*_mask.nii.gz in its "
                       r"func/\), so it would not be used; leave it out"):  # fmt: skip
        read_manifest(root, mask=mask)
    assert [s.mask.name for s in read_manifest(root)] == [
        "sub-01_mask.nii.gz",
        "sub-02_mask.nii.gz",
    ]
    (root / "sub-02" / "func" / "sub-02_mask.nii.gz").unlink()  # used by sub-02: accepted
    assert [s.mask for s in read_manifest(root, mask=mask)][1] == mask


def test_bids_subject_without_bold_is_reported(tmp_path):
    """A subject folder whose BOLD files are missing (an incomplete download; no func/) is
    an invalid subject, named with the others: never left out of the batch silently."""
    stem = "sub-02_task-objects_run-1"
    root = _bids(
        tmp_path / "bids",
        {
            "sub-01": _run("sub-01"),
            "sub-02": [f"{stem}_events.tsv", f"{stem}_bold.json"],
            "sub-03": _run("sub-03"),
        },
    )
    (root / "sub-04" / "anat").mkdir(parents=True)
    func = root / "sub-02" / "func"
    with pytest.raises(ManifestError) as info:
        read_manifest(root, mask=tmp_path / "m.nii.gz")
    assert str(info.value) == (
        f"manifest: subject 'sub-02': bold: {func} has no *_bold.nii.gz file (its other files "
        "are there: an incomplete download?); every sub-* folder is a subject (move it out, "
        "or give a TSV manifest) (1 other subject(s) have invalid inputs too: 'sub-04')"
    )
    assert info.value.param == "manifest" and info.value.subject_param is None
    for f in func.iterdir():
        f.unlink()
    (root / "sub-02").rename(tmp_path / "sub-02")
    want = r"^manifest: subject 'sub-04': bold: .*sub-04 has no func/ folder, so no BOLD run; "
    with pytest.raises(ManifestError, match=want + r"every sub-\* folder is a subject"):
        read_manifest(root, mask=tmp_path / "m.nii.gz")
    (root / "sub-04" / "anat").rmdir()
    (root / "sub-04").rmdir()
    assert [s.subject for s in read_manifest(root, mask=tmp_path / "m.nii.gz")] == [
        "sub-01",
        "sub-03",
    ]


def test_bids_derivative_runs_take_the_raw_runs_events(tmp_path):
    """fMRIPrep's ``..._space-X_desc-preproc_bold.nii.gz``: its events file is named after
    the raw run (BIDS: no space, res, den or desc entity); one named as the BOLD file is
    still taken, first."""
    raw = "sub-01_ses-1_task-objects_acq-fast_run-1"
    bold = "sub-01_task-objects_run-1_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"
    root = _bids(tmp_path / "bids", {"sub-01": [bold, "sub-01_task-objects_run-1_events.tsv"]})
    func = root / "sub-01" / "func"
    (spec,) = read_manifest(root, mask=tmp_path / "m.nii.gz")
    assert spec.labels == (func / "sub-01_task-objects_run-1_events.tsv",)
    same = bold.replace("_bold.nii.gz", "_events.tsv")
    (func / same).write_bytes(b"")
    assert read_manifest(root, mask=tmp_path / "m.nii.gz")[0].labels == (func / same,)
    (func / same).unlink()
    (func / "sub-01_task-objects_run-1_events.tsv").unlink()
    with pytest.raises(ManifestError, match=rf"_bold.nii.gz: no matching events file {same} or "
                       r"sub-01_task-objects_run-1_events.tsv$"):  # fmt: skip
        read_manifest(root, mask=tmp_path / "m.nii.gz")
    # every raw entity is kept: session, acquisition, run
    _bids(root, {"sub-01": [f"{raw}_space-T1w_desc-preproc_bold.nii.gz", f"{raw}_events.tsv"]})
    (func / bold).unlink()
    (spec,) = read_manifest(root, mask=tmp_path / "m.nii.gz")
    assert spec.labels == (func / f"{raw}_events.tsv",)
    # fMRIPrep's brain mask of each run is not the subject's ROI mask: the common one is
    brain = f"{raw}_space-T1w_desc-brain_mask.nii.gz"
    (func / brain).write_bytes(b"")
    (func / brain.replace("run-1", "run-2")).write_bytes(b"")
    (spec,) = read_manifest(root, mask=tmp_path / "m.nii.gz")
    assert spec.mask == tmp_path / "m.nii.gz"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("subject\tbold\tlabels\n01\tb\tl\n", r"missing column\(s\) \['mask'\]"),
        ("sub\tbold\tlabels\tmask\n01\tb\tl\tm\n", r"missing column\(s\) \['subject'\]"),
        (
            "subject\tbold\tlabels\tmask\n01\tb\tl\tm\n02\tb\tl\tm\n01\tc\tl\tm\n",
            r"subject\(s\) \['01'\] listed more than once",
        ),
        ("subject\tbold\tlabels\tmask\n01\t\tl\tm\n", r"line 2: subject, bold and labels"),
        ("subject\tbold\tlabels\tmask\n01\tb\tl\t\n", r"line 2: no mask for subject '01'"),
        ("subject\tbold\tlabels\tmask\n", r"has a header but no subject rows"),
        ("subject\tbold\tlabels\tmask\n01\t;\tl\tm\n", r"line 2: the bold cell ';' holds no"),
        ("subject\tbold\tlabels\tmask\n01\tb\t ; \tm\n", r"line 2: the labels cell ';' holds"),
        # a subject has one mask: the second is not silently dropped
        (
            "subject\tbold\tlabels\tmask\n01\tb\tl\ta.nii.gz;b.nii.gz\n",
            r"line 2: the mask cell 'a.nii.gz;b.nii.gz' holds 2 paths; a subject has one mask$",
        ),
        ("subject\tbold\tlabels\tmask\n\tb\tl\tm\n", r"line 2: subject, bold and labels"),
        ("subject\tbold\tlabels\tmask\n01\tb\n", r"line 2: subject, bold and labels"),
        ("subject\tbold\tlabels\tmask\nn/a\tb\tl\tm\n", r"line 2: subject 'n/a' is not a"),
        # one field more than the header: not the first column taken as an index
        ("subject\tbold\tlabels\tmask\n01\tb\tl\tm\tx\n", r"not a readable TSV table"),
        ("\n\n", r"m\.tsv: not a readable TSV table"),
        ("subject\tbold\tlabels\tmask\n../x\tb\tl\tm\n", r"subject '../x' is not a valid"),
        (
            "subject\tbold\tlabels\tmask\n01\tb\tl\tm\nsub-01\tb\tl\tm\n",
            r"subjects '01' and 'sub-01' would both write sub-01/",
        ),
    ],
)
def test_manifest_errors(tmp_path, text, match):
    manifest = tmp_path / "m.tsv"
    manifest.write_text(text)
    with pytest.raises(ManifestError, match=match):
        read_manifest(manifest)


def test_manifest_cells_are_read_as_written(tmp_path):
    """Subjects named like missing values (NA, null, None, nan) are names, as 01 is 01;
    only an empty cell is missing."""
    names = ["NA", "null", "None", "nan", "NaN", "01"]
    manifest = write_manifest(
        tmp_path / "m.tsv", [(n, f"{n}/NA.nii.gz", "None.txt", "nan.nii.gz") for n in names]
    )
    specs = read_manifest(manifest)
    assert [s.subject for s in specs] == names
    assert specs[0].files == (tmp_path / "NA/NA.nii.gz", tmp_path / "None.txt",
                              tmp_path / "nan.nii.gz")  # fmt: skip


def test_a_manifest_without_a_mask_column_takes_the_common_mask(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("subject\tbold\tlabels\n01\tb.nii.gz\tl.txt\n")
    (spec,) = read_manifest(manifest, mask=tmp_path / "mask.nii.gz")
    assert spec.mask == tmp_path / "mask.nii.gz"
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['mask'\]; .*\(mask: unless "
                       r"mask=PATH is given\)"):  # fmt: skip
        read_manifest(manifest)


def test_empty_manifest_file(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"manifest .*m\.tsv: is empty \(0 bytes\)"):
        read_manifest(manifest)


def test_manifest_errors_on_the_command_line(tmp_path, capsys):

    missing = tmp_path / "nope.tsv"
    assert main(["batch", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err == f"roidask: error: {missing}: no such file (expected a TSV "
        "file or a BIDS-like folder)\n"
    )
    bad = tmp_path / "bad.tsv"
    bad.write_text("subject\tbold\n01\tb\n")
    for target in (tmp_path, bad):  # a folder without sub-*/func; missing columns
        assert main(["batch", str(target), "--out", str(tmp_path / "out")]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"roidask: error: {target}: ")
    assert not (tmp_path / "out").exists()


def _invalid_subjects(haxby, root: Path) -> list[SubjectSpec]:
    """A valid subject, then subjects whose inputs exist but are wrong in their contents."""
    import nibabel as nib
    import numpy as np
    from helpers.files import write_image

    root.mkdir()
    img = nib.load(haxby.mask)
    values = np.asanyarray(img.dataobj).astype(np.uint8)
    two = write_image(root / "mask_two.nii.gz", values * 2, img.affine)  # not binary
    wide = write_image(root / "mask_wide.nii.gz", np.pad(values, ((0, 1), (0, 0), (0, 0))),
                       img.affine)  # fmt: skip
    chairs = root / "labels_chairs.txt"  # no 'house' volume
    chairs.write_text(haxby.labels.read_text().replace("house", "chair"))
    bold, labels, mask = (haxby.bold,), (haxby.labels,), haxby.mask
    return [
        SubjectSpec("ok", bold, labels, mask),
        SubjectSpec("two", bold, labels, two),
        SubjectSpec("chairs", bold, (chairs,), mask),
        SubjectSpec("wide", bold, labels, wide),
    ]


def test_check_subjects_checks_contents_without_reading_bold_voxels(haxby, tmp_path):
    """Every subject's headers, labels and mask against each other and the parameters,
    as ``roidask run`` checks them; the first invalid subject's error names the others."""
    from helpers.lazy import voxel_reads

    from roidask.batch import check_subjects
    from roidask.exceptions import InvalidParameterError
    from roidask.pipeline import PipelineParams

    specs = _invalid_subjects(haxby, tmp_path / "data")
    with voxel_reads() as reads:
        check_subjects(specs[:1])
        with pytest.raises(InvalidParameterError) as info:
            check_subjects(specs)
    assert haxby.bold not in reads  # headers only: the masks are the only images read
    message = str(info.value)
    # the mask named by its column (the library names it mask_img)
    assert message.startswith(f"manifest: subject 'two': mask {specs[1].mask}: expected a")
    assert message.endswith("(2 other subject(s) have invalid inputs too: 'chairs', 'wide')")
    assert info.value.param == "manifest"
    # each subject's own error: the labels, the grid
    cases = [(specs[2], r"unknown condition\(s\) \['house'\]"), (specs[3], "voxel grids")]
    for spec, want in cases:
        with pytest.raises(RoidaskError, match=f"^manifest: subject '{spec.subject}': .*{want}"):
            check_subjects([spec])
    # the parameters count: a contrast that every subject has passes, one they lack fails
    check_subjects(specs[:1], params=PipelineParams(contrast=("face", "cat")))
    with pytest.raises(RoidaskError, match=r"^manifest: subject 'ok': .*\['dog'\]"):
        check_subjects(specs[:1], params=PipelineParams(contrast=("face", "dog")))
    # a 4D mask (the BOLD given as mask): named by its column and file
    four = SubjectSpec("four", specs[0].bold, specs[0].labels, specs[0].bold[0])
    with pytest.raises(RoidaskError, match=f"^manifest: subject 'four': mask "
                       f"{re.escape(str(specs[0].bold[0]))}: got a 4D image"):  # fmt: skip
        check_subjects([four])
    # many invalid subjects: the first five others are named
    many = [SubjectSpec(f"t{i}", s.bold, s.labels, s.mask) for i, s in enumerate([specs[1]] * 8)]
    with pytest.raises(InvalidParameterError, match=r"7 other subject\(s\) .*'t5', \.\.\.\)$"):
        check_subjects(many)


def test_check_subjects_keeps_no_handle(haxby, tmp_path):
    """A batch's checks read every subject's mask: no read handle stays in this process."""
    from roidask.batch import check_subjects

    masks = []
    for i in range(3):
        masks.append(tmp_path / f"mask{i}.nii.gz")
        masks[-1].symlink_to(haxby.mask)
    check_subjects([SubjectSpec(f"s{i}", (haxby.bold,), (haxby.labels,), m)
                    for i, m in enumerate(masks)])  # fmt: skip
    from roidask.io import nifti

    assert not [k for k in nifti._HANDLES if k[0].startswith(str(tmp_path))]


def test_check_subjects_names_every_subject_missing_a_file(haxby, tmp_path):
    """Missing files are counted with the other invalid subjects, as contents are."""
    from roidask.batch import check_subjects
    from roidask.exceptions import UnreadableFileError

    gone = tmp_path / "gone.nii.gz"
    specs = [
        SubjectSpec("a", (gone,), (haxby.labels,), haxby.mask),
        SubjectSpec("ok", (haxby.bold,), (haxby.labels,), haxby.mask),
        SubjectSpec("b", (haxby.bold,), (haxby.labels,), gone),
    ]
    with pytest.raises(UnreadableFileError) as info:
        check_subjects(specs)
    assert str(info.value).startswith(f"manifest: subject 'a': bold {gone}: ")
    assert str(info.value).endswith("(1 other subject(s) have invalid inputs too: 'b')")


def test_check_subjects_names_the_subject_its_warnings_are_of(haxby, monkeypatch):
    """The checks warn as the subject's run does (labels, events): in its context, so the
    command line names the subject (``roidask: warning: subject '07': ...``)."""
    from roidask.batch import check_subjects, current_subject, manifest

    seen = []
    monkeypatch.setattr(manifest, "check_subject", lambda *a, **k: seen.append(current_subject()))
    specs = [SubjectSpec(s, (haxby.bold,), (haxby.labels,), haxby.mask) for s in ("07", "08")]
    check_subjects(specs)
    assert seen == ["07", "08"] and current_subject() is None


def test_a_manifest_or_mask_that_is_not_a_path_is_named(tmp_path):
    with pytest.raises(RoidaskTypeError, match=r"^manifest: expected a path .*got int$"):
        read_manifest(123)
    manifest = write_manifest(tmp_path / "m.tsv", [("01", "b.nii.gz", "l.txt", "")])
    with pytest.raises(RoidaskTypeError, match=r"^mask: expected a path .*got int$"):
        read_manifest(manifest, mask=1)


def test_check_subjects_takes_its_options_by_keyword():
    import inspect

    from roidask.batch import check_subjects

    parameters = inspect.signature(check_subjects).parameters.values()
    assert [p.name for p in parameters if p.kind is not p.KEYWORD_ONLY] == ["specs"]
