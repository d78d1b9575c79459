"""Per-volume condition labels from Haxby-style ``labels.txt`` or BIDS ``events.tsv``.

Both formats end up as one table with a row per volume and the columns
``condition`` (str) and ``run`` (int).
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from roidask.exceptions import EventsWarning, LabelsError, LabelsWarning
from roidask.io.locations import PathOrURL, S3Path, as_location, check_input_file, open_table

__all__ = [
    "ONSET_TOLERANCE_TR",
    "REST",
    "events_to_labels",
    "read_events",
    "read_labels",
    "volume_labels",
    "warnings_shown",
]

#: Condition given to volumes that no event covers.
REST = "rest"
#: Event onsets and ends are compared with volume onsets to within this fraction
#: of the TR, so that ``10 * 0.72 = 7.199999999999999`` s counts as 7.2 s.
ONSET_TOLERANCE_TR = 1e-6
_EVENT_COLUMNS = ("onset", "duration", "trial_type")


def _is_events(path: Path | S3Path) -> bool:
    """A BIDS events file by name: ``*_events.tsv`` or ``events.tsv`` (or ``.tsv.gz``)."""
    return re.search(r"(^|[_-])events\.tsv(\.gz)?$", path.name.lower()) is not None


def _looks_like_events(path: Path | S3Path) -> bool:
    """A TSV whose header has the BIDS events columns, whatever its name."""
    try:
        header = pd.read_csv(open_table(path), sep="\t", nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return False
    return all(c in header for c in _EVENT_COLUMNS)


_SHOWN = threading.local()  # this thread's labels warnings were shown already


@contextlib.contextmanager
def warnings_shown() -> Iterator[None]:
    """Within the block (in this thread), the labels' and events' warnings are not shown:
    a batch's input checks showed them for every subject, and its runs read the same
    files again."""
    before, _SHOWN.on = getattr(_SHOWN, "on", False), True
    try:
        yield
    finally:
        _SHOWN.on = before


def _warn(message: str, category: type[Warning], stacklevel: int) -> None:
    if not getattr(_SHOWN, "on", False):
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def read_labels(path: PathOrURL) -> pd.DataFrame:
    """Read a Haxby-style ``labels.txt``: space separated, header ``labels chunks``.

    Labels are read as written (``01`` is not ``1``; ``NA`` and ``None`` are names).

    Parameters
    ----------
    path : path or ``s3://`` URL
        The labels file: one row per volume, a ``labels`` column (the condition) and
        optionally ``chunks`` (the run, an integer).

    Returns
    -------
    DataFrame
        One row per volume, columns ``condition`` (str) and ``run`` (int, from
        ``chunks``; 0 without it).

    Raises
    ------
    UnreadableFileError, CorruptFileError
        ``path`` is missing, unreadable or empty.
    LabelsError
        Not a labels table: no ``labels`` column (an events table not named
        ``*_events.tsv`` is named so), no rows, a row without a label, or ``chunks``
        that are not integers.
    """
    path = check_input_file(path, "labels", what="labels file")
    try:
        table = pd.read_csv(open_table(path), sep=r"\s+", dtype=str, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LabelsError(
            f"labels {path}: not a readable labels table ({exc})", param="labels"
        ) from None
    if "labels" not in table.columns:
        if _looks_like_events(path):
            raise LabelsError(
                f"labels {path}: has the columns of a BIDS events table but is not named "
                "*_events.tsv; rename it (e.g. sub-01_task-x_run-1_events.tsv) so it is "
                "read as events",
                param="labels",
            )
        raise LabelsError(
            f"labels {path}: missing column 'labels'; expected a header 'labels chunks', "
            f"got columns {list(table.columns)}",
            param="labels",
        )
    if table.empty:
        raise LabelsError(
            f"labels {path}: has a header but no rows; expected one row per volume",
            param="labels",
        )
    if (table["labels"] == "").any():  # labels as written: NA and None are names
        row = int(np.flatnonzero((table["labels"] == "").to_numpy())[0]) + 2
        raise LabelsError(f"labels {path}: line {row} has no label", param="labels")
    if "chunks" in table.columns:
        try:
            run = pd.to_numeric(table["chunks"], errors="raise").astype(np.int64)
        except (ValueError, TypeError):
            raise LabelsError(
                f"labels {path}: column 'chunks' (the run index) must hold integers",
                param="labels",
            ) from None
    else:
        run = pd.Series(np.zeros(len(table), dtype=np.int64))
    out = pd.DataFrame(
        {"condition": table["labels"].astype(str).to_numpy(), "run": run.to_numpy()}
    )
    out.attrs["has_runs"] = "chunks" in table.columns
    return out


def read_events(path: PathOrURL) -> pd.DataFrame:
    """Read and validate a BIDS ``events.tsv`` (columns onset, duration, trial_type).

    Every column is read as text, exactly as written (``trial_type`` ``01`` is not
    ``1``, ``NA`` and ``None`` are names); ``onset`` and ``duration`` are then numbers
    of seconds. A ``trial_type`` that is BIDS's ``n/a`` (a missing value) or empty is
    refused: that event would have no condition.

    Parameters
    ----------
    path : path or ``s3://`` URL
        The events file (tab-separated, with a header).

    Returns
    -------
    DataFrame
        The events as read, with ``onset`` and ``duration`` as float64 seconds and
        ``trial_type`` as str; other columns as text.

    Raises
    ------
    UnreadableFileError, CorruptFileError
        ``path`` is missing, unreadable or empty.
    LabelsError
        Not a readable table, a missing column, an onset or duration that is not a
        finite number of seconds, a negative duration, or a ``trial_type`` that is
        ``n/a`` or empty (the message names the line).
    """
    path = check_input_file(path, "labels", what="events file")
    try:  # text as written: trial_type 01 stays 01 (not 1), NA and None are names
        events = pd.read_csv(open_table(path), sep="\t", dtype=str, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LabelsError(
            f"labels {path}: not a readable events table ({exc})", param="labels"
        ) from None
    missing = [c for c in _EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise LabelsError(
            f"labels {path}: missing column(s) {missing}; an events.tsv needs "
            f"{list(_EVENT_COLUMNS)}, got {list(events.columns)}",
            param="labels",
        )
    for col in ("onset", "duration"):
        values = pd.to_numeric(events[col], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 2
            cell = str(events[col].iloc[row - 2])
            shown = repr(cell) if cell.strip() else "an empty cell"
            raise LabelsError(
                f"labels {path}: line {row}: column '{col}' must be a finite number of "
                f"seconds, got {shown}",
                param="labels",
            )
        events[col] = values.astype(np.float64)
    negative = events["duration"] < 0
    if negative.any():
        row = int(np.flatnonzero(negative.to_numpy())[0]) + 2
        raise LabelsError(
            f"labels {path}: line {row}: negative duration "
            f"{events['duration'][negative].iloc[0]} s; durations must be >= 0",
            param="labels",
        )
    # BIDS's n/a is a missing value: an event with no condition could label its volumes
    # with none (nor as rest), so it is refused, as an empty cell is
    kinds = events["trial_type"].astype(str)
    missing = (kinds == "n/a") | (kinds.str.strip() == "")
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0]) + 2
        what = "n/a (a missing value)" if kinds.iloc[row - 2] == "n/a" else "empty"
        raise LabelsError(
            f"labels {path}: line {row}: trial_type is {what}; every event needs a "
            "condition (give it one, or remove the row)",
            param="labels",
        )
    events["trial_type"] = kinds
    return events


def events_to_labels(
    events: pd.DataFrame,
    *,
    n_volumes: int,
    tr_s: float,
    source: PathOrURL | None = None,
) -> np.ndarray:
    """Label volumes by the event covering their acquisition onset.

    Volume ``i`` starts at ``i * tr_s`` seconds; it takes the ``trial_type`` of
    an event with ``onset <= i * tr_s < onset + duration`` (the latest-starting
    one if several cover it) and :data:`REST` elsewhere. Times are compared to
    within :data:`ONSET_TOLERANCE_TR` of the TR, so an event starting exactly at
    a volume's onset covers it whatever the rounding of ``i * tr_s``.

    Warns
    -----
    EventsWarning
        Events that start at or after the end of the run, or cover no volume's onset
        (they label nothing); volumes in events of two trial types.
    """
    tol = ONSET_TOLERANCE_TR * float(tr_s)
    t = np.arange(n_volumes) * float(tr_s)
    out = np.full(n_volumes, REST, dtype=object)
    order = np.argsort(events["onset"].to_numpy(), kind="stable")
    clashes = np.zeros(n_volumes, dtype=bool)  # covered by events of two trial types
    first_clash: tuple[str, str] | None = None
    run_end = n_volumes * float(tr_s)
    empty = []  # events within the run that cover no volume's onset
    for idx in order:  # later onsets overwrite earlier ones
        onset = events["onset"].iloc[idx]
        end = onset + events["duration"].iloc[idx]
        covered = (t >= onset - tol) & (t < end - tol)
        kind = events["trial_type"].iloc[idx]
        if not covered.any() and onset < run_end - tol:
            empty.append(idx)
        clash = covered & (out != REST) & (out != kind)
        if clash.any() and first_clash is None:
            first_clash = (str(out[clash][0]), kind)
        clashes |= clash
        out[covered] = kind
    if clashes.any():
        i = int(np.flatnonzero(clashes)[0])
        assert first_clash is not None
        _warn(
            f"{source or 'events'}: {int(clashes.sum())} volume(s) fall in events of two "
            f"trial types, e.g. volume {i} at {t[i]:g} s in {first_clash[0]!r} and "
            f"{first_clash[1]!r}; each is labelled by the event that starts last",
            EventsWarning,
            stacklevel=2,
        )
    if empty:
        first = events.iloc[empty[0]]
        kinds = sorted({str(k) for k in events["trial_type"].iloc[empty]})
        _warn(
            f"{source or 'events'}: {len(empty)} event(s) of {', '.join(map(repr, kinds))} "
            f"cover no volume's onset, e.g. {first['trial_type']!r} at {first['onset']:g} s "
            f"for {first['duration']:g} s (volumes start every {tr_s:g} s); they label no "
            "volume (a duration of 0, or events shorter than the TR between two volumes)",
            EventsWarning,
            stacklevel=2,
        )
    late = events["onset"].to_numpy() >= run_end - tol
    if late.any():
        first = events[late].iloc[0]
        _warn(
            f"{source or 'events'}: {int(late.sum())} event(s) start at or after the end of "
            f"the run ({n_volumes} volumes x {tr_s:g} s = {run_end:g} s), e.g. "
            f"{first['trial_type']!r} at {first['onset']:g} s; they label no volume "
            "(wrong TR, or events of another run?)",
            EventsWarning,
            stacklevel=2,
        )
    return out.astype(str)


def volume_labels(
    labels: list[PathOrURL],
    *,
    n_volumes_per_run: list[int],
    tr_s: float | None,
    bold_names: list[str] | None = None,
    tr_note: str | None = None,
) -> pd.DataFrame:
    """Per-volume ``condition`` and ``run`` for runs concatenated along time.

    Parameters
    ----------
    labels : list of path
        Either Haxby ``labels.txt`` files whose rows, concatenated, cover every
        volume (one file for all runs, or one per run), or one BIDS
        ``events.tsv`` per run.
    n_volumes_per_run : list of int
        Number of volumes of each BOLD file, in order.
    tr_s : float or None
        Repetition time in seconds (needed for events files).
    bold_names : list of str, optional
        BOLD file names, for error messages.
    tr_note : str, optional
        Where ``tr_s`` comes from, if it is a guess (a header with no time unit): events
        files then warn with it, since a wrong TR labels the wrong volumes.

    Returns
    -------
    DataFrame
        ``condition`` and ``run`` per volume. With labels.txt the run comes from
        its ``chunks`` column; with events files (or a labels.txt without
        ``chunks``) it is the index of the BOLD file.
    """
    paths = [as_location(p) for p in labels]
    n_total = int(sum(n_volumes_per_run))
    file_index = np.repeat(np.arange(len(n_volumes_per_run)), n_volumes_per_run)
    names = bold_names or [f"run {i}" for i in range(len(n_volumes_per_run))]
    if not paths:
        raise LabelsError(
            "labels: at least one labels.txt or events.tsv file is needed", param="labels"
        )
    kinds = {_is_events(p) for p in paths}
    if len(kinds) > 1:
        raise LabelsError(
            f"labels: mix of events.tsv and labels.txt files {[str(p) for p in paths]}; "
            "use one kind",
            param="labels",
        )
    if kinds == {True}:
        if len(paths) != len(n_volumes_per_run):
            raise LabelsError(
                f"labels: {len(paths)} events.tsv file(s) for {len(n_volumes_per_run)} BOLD "
                "run(s); give one events.tsv per run, in the same order",
                param="labels",
            )
        if tr_s is None or not tr_s > 0:
            raise LabelsError(
                "tr_s: events.tsv files need the repetition time and the BOLD header has "
                "none; pass tr_s=SECONDS",
                param="tr_s",
            )
        if tr_note is not None:
            _warn(
                f"{tr_note} for the events files; if that is not the TR, pass tr_s (roidask "
                "run --tr) or set the header's pixdim[4] and time unit",
                EventsWarning,
                stacklevel=3,
            )
        conditions = [
            events_to_labels(read_events(p), n_volumes=n, tr_s=tr_s, source=p)
            for p, n in zip(paths, n_volumes_per_run, strict=True)
        ]
        return pd.DataFrame({"condition": np.concatenate(conditions), "run": file_index})

    tables = [read_labels(p) for p in paths]
    if len(tables) > 1 and len(tables) == len(n_volumes_per_run):
        for p, t, n, name in zip(paths, tables, n_volumes_per_run, names, strict=True):
            if len(t) != n:
                raise LabelsError(
                    f"labels {p}: {len(t)} label rows but {name} has {n} volumes; "
                    "expected one row per volume",
                    param="labels",
                )
    table = pd.concat(tables, ignore_index=True)
    if len(table) != n_total:
        src = ", ".join(str(p) for p in paths)
        raise LabelsError(
            f"labels {src}: {len(table)} label rows but the BOLD data has {n_total} volumes"
            + (
                f" ({' + '.join(map(str, n_volumes_per_run))})"
                if len(n_volumes_per_run) > 1
                else ""
            )
            + "; expected one row per volume",
            param="labels",
        )
    has_runs = all(t.attrs.get("has_runs") for t in tables)
    run = table["run"].to_numpy() if has_runs else file_index
    if has_runs and len(tables) > 1:
        run = _distinct_runs(run, np.repeat(np.arange(len(tables)), [len(t) for t in tables]),
                             paths)  # fmt: skip
    return pd.DataFrame({"condition": table["condition"].to_numpy(), "run": run})


def _distinct_runs(run: np.ndarray, file_of: np.ndarray, paths: list) -> np.ndarray:
    """Runs of several labels files as given, unless two files use the same run number
    (each file's ``chunks`` counted from 0): then each (file, run) pair is a run of its
    own, numbered 0, 1, ... in order, and a warning says so. Different acquisitions are
    never pooled as one run (leave-one-run-out, split-half folds)."""
    per_file = [set(run[file_of == i].tolist()) for i in range(len(paths))]
    shared = [
        (i, j) for i in range(len(paths)) for j in range(i + 1, len(paths))
        if per_file[i] & per_file[j]
    ]  # fmt: skip
    if not shared:
        return run
    pairs = pd.MultiIndex.from_arrays([file_of, run])
    codes, _ = pd.factorize(pairs)  # in order of first appearance
    i, j = shared[0]
    _warn(
        f"labels: {paths[i]} and {paths[j]} number their runs ('chunks') alike "
        f"({sorted(per_file[i] & per_file[j])[:5]}); they are runs of different files, "
        f"numbered 0-{codes.max()} in order",
        LabelsWarning,
        stacklevel=3,
    )
    return codes.astype(run.dtype)
