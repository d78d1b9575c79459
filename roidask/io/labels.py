"""Per-volume condition labels from Haxby-style ``labels.txt`` or BIDS ``events.tsv``.

Both formats end up as one table with a row per volume and the columns
``condition`` (str) and ``run`` (int).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from roidask.exceptions import LabelsError

__all__ = ["REST", "events_to_labels", "read_events", "read_labels", "volume_labels"]

#: Condition given to volumes that no event covers.
REST = "rest"
_EVENT_COLUMNS = ("onset", "duration", "trial_type")


def _is_events(path: Path) -> bool:
    return path.name.lower().endswith((".tsv", ".tsv.gz")) and "events" in path.name.lower()


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Haxby-style ``labels.txt``: space separated, header ``labels chunks``.

    Returns
    -------
    DataFrame
        One row per volume, columns ``condition`` (str) and ``run`` (int, from
        ``chunks``).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    try:
        table = pd.read_csv(path, sep=r"\s+", dtype=str, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: not a readable labels table ({exc})") from None
    if "labels" not in table.columns:
        raise LabelsError(
            f"{path}: missing column 'labels'; expected a header 'labels chunks', "
            f"got columns {list(table.columns)}"
        )
    if table["labels"].isna().any():
        row = int(np.flatnonzero(table["labels"].isna().to_numpy())[0]) + 2
        raise LabelsError(f"{path}: line {row} has no label")
    if "chunks" in table.columns:
        try:
            run = pd.to_numeric(table["chunks"], errors="raise").astype(np.int64)
        except (ValueError, TypeError):
            raise LabelsError(
                f"{path}: column 'chunks' (the run index) must hold integers"
            ) from None
    else:
        run = pd.Series(np.zeros(len(table), dtype=np.int64))
    return pd.DataFrame(
        {"condition": table["labels"].astype(str).to_numpy(), "run": run.to_numpy()}
    )


def read_events(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a BIDS ``events.tsv`` (columns onset, duration, trial_type)."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: events file not found")
    try:
        events = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: not a readable events table ({exc})") from None
    missing = [c for c in _EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise LabelsError(
            f"{path}: missing column(s) {missing}; an events.tsv needs "
            f"{list(_EVENT_COLUMNS)}, got {list(events.columns)}"
        )
    for col in ("onset", "duration"):
        values = pd.to_numeric(events[col], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
            raise LabelsError(f"{path}: line {row}: column '{col}' must be a number of seconds")
        events[col] = values.astype(np.float64)
    negative = events["duration"] < 0
    if negative.any():
        row = int(np.flatnonzero(negative.to_numpy())[0]) + 2
        raise LabelsError(
            f"{path}: line {row}: negative duration {events['duration'][negative].iloc[0]} s; "
            "durations must be >= 0"
        )
    if events["trial_type"].isna().any():
        row = int(np.flatnonzero(events["trial_type"].isna().to_numpy())[0]) + 2
        raise LabelsError(f"{path}: line {row}: empty trial_type")
    events["trial_type"] = events["trial_type"].astype(str)
    return events


def events_to_labels(events: pd.DataFrame, *, n_volumes: int, tr_s: float) -> np.ndarray:
    """Label volumes by the event covering their acquisition onset.

    Volume ``i`` starts at ``i * tr_s`` seconds; it takes the ``trial_type`` of
    an event with ``onset <= i * tr_s < onset + duration`` (the latest-starting
    one if several cover it) and :data:`REST` elsewhere.
    """
    t = np.arange(n_volumes) * float(tr_s)
    out = np.full(n_volumes, REST, dtype=object)
    order = np.argsort(events["onset"].to_numpy(), kind="stable")
    for idx in order:  # later onsets overwrite earlier ones
        onset = events["onset"].iloc[idx]
        end = onset + events["duration"].iloc[idx]
        out[(t >= onset) & (t < end)] = events["trial_type"].iloc[idx]
    return out.astype(str)


def volume_labels(
    labels: list[str | os.PathLike],
    *,
    n_volumes_per_run: list[int],
    tr_s: float | None,
    bold_names: list[str] | None = None,
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

    Returns
    -------
    DataFrame
        ``condition`` and ``run`` per volume. With labels.txt the run comes from
        its ``chunks`` column; with events files (or a labels.txt without
        ``chunks``) it is the index of the BOLD file.
    """
    paths = [Path(p) for p in labels]
    n_total = int(sum(n_volumes_per_run))
    file_index = np.repeat(np.arange(len(n_volumes_per_run)), n_volumes_per_run)
    names = bold_names or [f"run {i}" for i in range(len(n_volumes_per_run))]
    if not paths:
        raise LabelsError("labels: at least one labels.txt or events.tsv file is needed")
    kinds = {_is_events(p) for p in paths}
    if len(kinds) > 1:
        raise LabelsError(
            f"labels: mix of events.tsv and labels.txt files {[str(p) for p in paths]}; "
            "use one kind"
        )
    if kinds == {True}:
        if len(paths) != len(n_volumes_per_run):
            raise LabelsError(
                f"labels: {len(paths)} events.tsv file(s) for {len(n_volumes_per_run)} BOLD "
                "run(s); give one events.tsv per run, in the same order"
            )
        if tr_s is None or not tr_s > 0:
            raise LabelsError(
                "labels: events.tsv needs the repetition time; the BOLD header has none, "
                "pass tr_s (--tr SECONDS)"
            )
        conditions = [
            events_to_labels(read_events(p), n_volumes=n, tr_s=tr_s)
            for p, n in zip(paths, n_volumes_per_run, strict=True)
        ]
        return pd.DataFrame({"condition": np.concatenate(conditions), "run": file_index})

    tables = [read_labels(p) for p in paths]
    if len(tables) > 1 and len(tables) == len(n_volumes_per_run):
        for p, t, n, name in zip(paths, tables, n_volumes_per_run, names, strict=True):
            if len(t) != n:
                raise LabelsError(
                    f"{p}: {len(t)} label rows but {name} has {n} volumes; "
                    "expected one row per volume"
                )
    table = pd.concat(tables, ignore_index=True)
    if len(table) != n_total:
        src = ", ".join(str(p) for p in paths)
        raise LabelsError(
            f"{src}: {len(table)} label rows but the BOLD data has {n_total} volumes "
            f"({' + '.join(str(n) for n in n_volumes_per_run)}); expected one row per volume"
        )
    has_chunks = all("chunks" in pd.read_csv(p, sep=r"\s+", nrows=0).columns for p in paths)
    run = table["run"].to_numpy() if has_chunks else file_index
    return pd.DataFrame({"condition": table["condition"].to_numpy(), "run": run})
