"""Per-volume conditions from labels.txt and events.tsv: event timing to within a tolerance
of the TR, events beyond the run, misnamed events tables, malformed tables."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers.files import write_bold, write_events

from roidask.exceptions import CorruptFileError, LabelsError
from roidask.io import bold_from_nifti, read_events, read_labels
from roidask.io.labels import REST, events_to_labels


def conditions(bold, events, tr_s):
    return bold_from_nifti(bold, labels=[events], tr_s=tr_s)["condition"].values


def test_events_on_volume_onsets_with_tr_0_72(tmp_path):
    """HCP's TR: 10 * 0.72 = 7.199999999999999 s is volume 10's onset, 7.2 s."""
    bold = write_bold(tmp_path / "run_bold.nii.gz", 40, tr_s=0.72)
    events = write_events(
        tmp_path / "sub-01_run-1_events.tsv",
        [(7.2, 7.2, "face"), (14.4, 7.2, "house"), (21.6, 3.6, "face")],
    )
    got = conditions(bold, events, 0.72)
    want = np.full(40, REST, dtype=object)
    want[10:20], want[20:30], want[30:35] = "face", "house", "face"
    np.testing.assert_array_equal(got, want.astype(str))
    assert (got[10], got[20], got[30]) == ("face", "house", "face")


def test_events_on_volume_onsets_with_tr_2(tmp_path):
    bold = write_bold(tmp_path / "run_bold.nii.gz", 30, tr_s=2.0)
    events = write_events(
        tmp_path / "events.tsv", [(0.0, 4.0, "a"), (20.0, 20.0, "b"), (40.0, 2.0, "a")]
    )
    got = conditions(bold, events, 2.0)
    want = np.full(30, REST, dtype=object)
    want[0:2], want[10:20], want[20] = "a", "b", "a"
    np.testing.assert_array_equal(got, want.astype(str))


def test_the_tolerance_is_a_millionth_of_the_tr():
    events = pd.DataFrame(
        {"onset": [7.2 + 1e-3, 14.4 - 1e-9], "duration": [1.0, 0.72], "trial_type": ["a", "b"]}
    )
    got = events_to_labels(events, n_volumes=25, tr_s=0.72)
    # 1 ms after volume 10's onset: volume 11 is the first covered; 1 ns before 20: 20 is
    assert list(np.flatnonzero(got == "a")) == [11]
    assert list(np.flatnonzero(got == "b")) == [20]


def test_events_beyond_the_run_warn(tmp_path):
    from roidask.exceptions import EventsWarning

    events = write_events(
        tmp_path / "sub-01_events.tsv",
        [(0.0, 4.0, "a"), (40.0, 2.0, "late"), (50.0, 2.0, "late")],
    )
    table = read_events(events)
    with pytest.warns(EventsWarning) as record:
        got = events_to_labels(table, n_volumes=20, tr_s=2.0, source=events)
    (warning,) = record
    assert str(warning.message) == (
        f"{events}: 2 event(s) start at or after the end of the run (20 volumes x 2 s = 40 s), "
        "e.g. 'late' at 40 s; they label no volume (wrong TR, or events of another run?)"
    )
    assert list(got[:2]) == ["a", "a"] and set(got[2:]) == {REST}
    with warnings.catch_warnings():  # an event inside the run: no warning
        warnings.simplefilter("error", EventsWarning)
        events_to_labels(table.iloc[:1], n_volumes=20, tr_s=2.0)


def test_events_that_cover_no_volume_warn(tmp_path):
    from roidask.exceptions import EventsWarning

    # volumes start at 0, 2, 4, ... s: an instant event, and one between two onsets
    events = write_events(
        tmp_path / "sub-01_events.tsv",
        [(0.0, 4.0, "a"), (6.0, 0.0, "face"), (8.5, 1.0, "house"), (10.0, 2.0, "a")],
    )
    table = read_events(events)
    with pytest.warns(EventsWarning) as record:
        got = events_to_labels(table, n_volumes=20, tr_s=2.0, source=events)
    (warning,) = record
    assert str(warning.message) == (
        f"{events}: 2 event(s) of 'face', 'house' cover no volume's onset, e.g. 'face' at 6 s "
        "for 0 s (volumes start every 2 s); they label no volume (a duration of 0, or events "
        "shorter than the TR between two volumes)"
    )
    assert list(got[:6]) == ["a", "a", REST, REST, REST, "a"]


def test_events_of_two_trial_types_on_one_volume_warn(tmp_path):
    """Overlapping events of different trial types: the later one labels the volumes they
    share (as documented), and a warning says how many and where."""
    from roidask.exceptions import EventsWarning

    events = write_events(
        tmp_path / "sub-01_events.tsv",
        [(0.0, 10.0, "face"), (4.0, 10.0, "house"), (20.0, 4.0, "face"), (20.0, 2.0, "face")],
    )
    with pytest.warns(EventsWarning, match=r"3 volume\(s\) fall in events of two trial types, "
                      r"e\.g\. volume 2 at 4 s in 'face' and 'house'; each is labelled by the "
                      r"event that starts last"):  # fmt: skip
        got = events_to_labels(read_events(events), n_volumes=14, tr_s=2.0, source=events)
    assert list(got[:7]) == ["face", "face", "house", "house", "house", "house", "house"]
    assert list(got[10:12]) == ["face", "face"]  # the same type twice: no clash


def test_an_events_table_not_named_events_tsv_says_so(tmp_path):
    bold = write_bold(tmp_path / "run_bold.nii.gz", 10)
    table = write_events(tmp_path / "conditions.tsv", [(0.0, 4.0, "a")])
    with pytest.raises(LabelsError) as info:
        bold_from_nifti(bold, labels=[table])
    assert str(info.value) == (
        f"labels {table}: has the columns of a BIDS events table but is not named "
        "*_events.tsv; rename it (e.g. sub-01_task-x_run-1_events.tsv) so it is read as events"
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [("n/a", 2.0, "a")],
            r"line 2: column 'onset' must be a finite number of seconds, got 'n/a'$",
        ),
        ([(0.0, "", "a")], r"line 2: column 'duration' must be a finite .*got an empty cell$"),
        ([(0.0, 2.0, "a"), (1.0, "x", "b")], r"line 3: column 'duration' must be a finite"),
        ([(0.0, "inf", "a")], r"line 2: column 'duration' must be a finite number .*got 'inf'$"),
        ([("-inf", 2.0, "a")], r"line 2: column 'onset' must be a finite number"),
        # BIDS's n/a: a missing value, as an empty cell
        (
            [(0.0, 2.0, "a"), (2.0, 2.0, "n/a")],
            r"line 3: trial_type is n/a \(a missing value\); every event needs a condition",
        ),
        ([(0.0, 2.0, "")], r"line 2: trial_type is empty; every event needs a condition"),
        ([(0.0, -1.0, "a")], r"line 2: negative duration -1.0 s"),
    ],
)
def test_malformed_events(tmp_path, rows, message):
    path = write_events(tmp_path / "x_events.tsv", rows)
    with pytest.raises(LabelsError, match=rf"^labels {path}: {message}"):
        read_events(path)


def test_trial_types_are_read_as_written(tmp_path):
    """trial_type is text: ``01`` stays ``01`` in a run whose trial types are all numbers
    as in one that has a word too (type inference made it ``1`` there: the run dropped out
    of the contrast ``01 02``), and ``NA``, ``None``, ``nan`` are names, not missing."""
    from roidask._validate import check_conditions
    from roidask.io.labels import volume_labels

    numbers = write_events(tmp_path / "r1_events.tsv", [(0.0, 2.0, "01"), (2.0, 2.0, "02")])
    mixed = write_events(
        tmp_path / "r2_events.tsv", [(0.0, 2.0, "01"), (2.0, 2.0, "02"), (4.0, 2.0, "cue")]
    )
    table = volume_labels([numbers, mixed], n_volumes_per_run=[3, 3], tr_s=2.0)
    assert table["condition"].tolist() == ["01", "02", REST, "01", "02", "cue"]
    _, index, _ = check_conditions(
        ("01", "02"), table["condition"].to_numpy(), param="contrast", exact=2
    )
    assert index.tolist() == [0, 1, 3, 4]  # both runs' volumes
    names = write_events(
        tmp_path / "r3_events.tsv",
        [(0.0, 2.0, "NA"), (2.0, 2.0, "None"), (4.0, 2.0, "nan"), (6.0, 2.0, "1.0")],
    )
    assert read_events(names)["trial_type"].tolist() == ["NA", "None", "nan", "1.0"]


def test_labels_txt(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("labels chunks\nface 0\nrest 0\nhouse 1\n")
    table = read_labels(path)
    assert list(table["condition"]) == ["face", "rest", "house"]
    assert list(table["run"]) == [0, 0, 1]
    path.write_text("labels chunks\nNA 0\nNone 0\n01 1\n")  # names, as written
    assert list(read_labels(path)["condition"]) == ["NA", "None", "01"]
    path.write_text("labels chunks\n")
    with pytest.raises(LabelsError, match=r"has a header but no rows"):
        read_labels(path)
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"labels .*labels\.txt: is empty \(0 bytes\)"):
        read_labels(path)
    path.write_text("condition run\nface 0\n")
    with pytest.raises(LabelsError, match=r"missing column 'labels'"):
        read_labels(path)


def test_runs_of_several_labels_files_are_never_pooled(tmp_path):
    """One labels.txt per BOLD file, each counting its runs ('chunks') from 0: a run of one
    file is not the run of another with the same number (leave-one-run-out and split-half
    would pool them); renumbered in order, with a warning. Distinct numbers are kept."""
    from roidask.exceptions import LabelsWarning
    from roidask.io.labels import volume_labels

    a, b, c = (tmp_path / f"{n}.txt" for n in "abc")
    a.write_text("labels chunks\nface 0\nhouse 0\nface 1\nhouse 1\n")
    b.write_text("labels chunks\nhouse 0\nface 0\nhouse 1\nface 1\n")
    c.write_text("labels chunks\nhouse 2\nface 2\nhouse 3\nface 3\n")
    with pytest.warns(LabelsWarning, match=r"a.txt and .*b.txt number their runs .*\[0, 1\]"):
        table = volume_labels([a, b], n_volumes_per_run=[4, 4], tr_s=2.0)
    assert table["run"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert table["condition"].tolist()[:4] == ["face", "house", "face", "house"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = volume_labels([a, c], n_volumes_per_run=[4, 4], tr_s=2.0)
        one = volume_labels([a], n_volumes_per_run=[4], tr_s=2.0)
    assert kept["run"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert one["run"].tolist() == [0, 0, 1, 1]


def test_a_tr_without_time_unit_warns_with_events(tmp_path):
    """nibabel's default header has pixdim[4] = 1 and no time unit: read as a TR of 1 s, the
    events would label the wrong volumes if that is not the TR. Said once, with events
    only; a given TR or a header with units says nothing."""
    import nibabel as nib

    from roidask.exceptions import EventsWarning

    bold = write_bold(tmp_path / "x_bold.nii.gz", 10)
    img = nib.load(bold)
    bare = tmp_path / "bare_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), bare)  # no units, TR 1
    events = write_events(tmp_path / "x_events.tsv", [(0.0, 4.0, "a")])
    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\n" + "a 0\n" * 10)
    with pytest.warns(EventsWarning, match=r"bare_bold.nii.gz: its header gives pixdim\[4\] = 1 "
                      r"with no time unit, read as a TR in seconds for the events files; "
                      r"if that is not the TR, pass tr_s \(roidask run --tr\)"):  # fmt: skip
        got = bold_from_nifti(bare, labels=[events])
    assert list(got["condition"].values[:5]) == ["a"] * 4 + [REST]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EventsWarning)
        bold_from_nifti(bare, labels=[events], tr_s=2.0)
        bold_from_nifti(bare, labels=[labels])
        bold_from_nifti(bold, labels=[events])


def test_labels_messages_name_the_parameter_and_add_up_runs(tmp_path):
    """A labels file that is not text is named as ``labels`` (--labels); a count that does
    not match says the runs' sum only when there are several."""
    from roidask.io.labels import volume_labels

    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\x00\x01\xff\xfebinary")
    with pytest.raises(LabelsError, match=r"^labels .*labels\.bin: not a readable") as info:
        read_labels(binary)
    assert info.value.param == "labels"
    labels = tmp_path / "labels.txt"
    labels.write_text("labels chunks\nface 0\nhouse 0\n")
    with pytest.raises(LabelsError, match=r"has 3 volumes; expected one row per volume"):
        volume_labels([labels], n_volumes_per_run=[3], tr_s=2.0)
    with pytest.raises(LabelsError, match=r"has 5 volumes \(3 \+ 2\); expected one row"):
        volume_labels([labels], n_volumes_per_run=[3, 2], tr_s=2.0)


def test_labels_warnings_shown_once_in_a_batch(tmp_path):
    """A batch's input checks show the labels' warnings; its subjects' runs, which read the
    same files again, do not show them a second time (warnings_shown, in their thread)."""
    from roidask.exceptions import LabelsWarning
    from roidask.io.labels import volume_labels, warnings_shown

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    for path in (a, b):
        path.write_text("labels chunks\nface 0\nhouse 1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelsWarning)
        with warnings_shown():
            volume_labels([a, b], n_volumes_per_run=[2, 2], tr_s=2.0)
    with pytest.warns(LabelsWarning):  # shown again outside
        volume_labels([a, b], n_volumes_per_run=[2, 2], tr_s=2.0)
