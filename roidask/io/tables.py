"""The two tables roidask writes, one writer (and reader) each: ``signals.tsv`` and ``rois.tsv``.

Both are tab-separated with a header, missing values written ``n/a`` (BIDS), and
written atomically (temporary file renamed into place). Results of folds (ROIs
defined on other runs than the signals: :mod:`roidask.ops.folds`) add a leading
``fold`` column to both.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from roidask._atomic import atomic_file, check_parent
from roidask._validate import check_bool, check_input_file
from roidask.exceptions import InvalidParameterError, OutputExistsError

__all__ = [
    "FOLDS_COLUMNS",
    "FOLD_COLUMN",
    "ROI_TABLE_COLUMNS",
    "SIGNALS_COLUMNS",
    "read_roi_table",
    "read_signals_tsv",
    "signals_to_frame",
    "write_folds_tsv",
    "write_roi_table",
    "write_signals_tsv",
]

#: Columns of an ROI table (:func:`roidask.ops.rois.roi_table`), in order.
ROI_TABLE_COLUMNS = (
    "label",
    "n_voxels",
    "volume_mm3",
    "com_x_mm",
    "com_y_mm",
    "com_z_mm",
    "peak_x_mm",
    "peak_y_mm",
    "peak_z_mm",
    "peak_value",
    "mean_value",
)
#: Columns of ``signals.tsv``: one row per ROI and volume.
SIGNALS_COLUMNS = ("roi", "condition", "run", "volume", "time_s", "value")
#: Leading column of both tables for results in folds: the ROI set of the row.
FOLD_COLUMN = "fold"
#: Columns of ``folds.tsv``: what each fold used (run values, space-separated) and found.
FOLDS_COLUMNS = ("fold", "roi_runs", "signal_runs", "n_rois")
#: Decimals of the mm columns of ``rois.tsv`` (a micrometre: far below any voxel).
MM_DECIMALS = 3
#: Significant digits of float values in the tables (float32 maps need 7, signals 9).
VALUE_DIGITS = 9
_NA = "n/a"


def _check_target(path: Path, overwrite: bool, param: str) -> None:
    overwrite = check_bool(overwrite, "overwrite")
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{param} {path}: already exists; pass overwrite=True to replace it", param=param
        )
    check_parent(path, param=param)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep=_NA, float_format=f"%.{VALUE_DIGITS}g")
    return path


# -- signals -------------------------------------------------------------------------------
def signals_to_frame(signals: xr.DataArray) -> pd.DataFrame:
    """Tidy table of ROI signals (computes them).

    Parameters
    ----------
    signals : xarray.DataArray
        Dims ``(roi, time)`` with coords ``condition`` and ``run`` along time
        (output of :func:`roidask.ops.extract.extract_signals`); or
        ``(fold, roi, time)`` signals of folds (:func:`roidask.pipeline.roi_pipeline`
        with an independent ``roi_definition``), NaN outside each fold's signal
        volumes, with the boolean coordinate ``signal_volume`` on ``(fold, time)``.

    Returns
    -------
    pandas.DataFrame
        One row per ROI and volume (ROI-major), columns :data:`SIGNALS_COLUMNS`:
        ``roi`` (label value), ``condition``, ``run``, ``volume`` (index in the
        concatenated series), ``time_s`` (the ``time`` coordinate, seconds) and
        ``value``. Folds: a leading ``fold`` column, and per fold the rows of its
        signal volumes and of the labels it has (not all NaN there) only.
    """
    if isinstance(signals, xr.DataArray) and set(signals.dims) == {"fold", "roi", "time"}:
        return _fold_frame(signals)
    if not isinstance(signals, xr.DataArray) or set(signals.dims) != {"roi", "time"}:
        got = signals.dims if isinstance(signals, xr.DataArray) else type(signals).__name__
        raise InvalidParameterError(
            f"signals: expected an xarray.DataArray with dims ('roi', 'time'), got {got}",
            param="signals",
        )
    for coord in ("condition", "run"):
        if coord not in signals.coords or signals[coord].dims != ("time",):
            raise InvalidParameterError(
                f"signals: has no {coord!r} coordinate along time", param="signals"
            )
    values = np.asarray(signals.transpose("roi", "time").values)
    n_roi, n_t = values.shape
    volume = np.asarray(signals["volume"].values) if "volume" in signals.coords else np.arange(n_t)
    return pd.DataFrame(
        {
            "roi": np.repeat(np.asarray(signals["roi"].values), n_t),
            "condition": np.tile(np.asarray(signals["condition"].values).astype(str), n_roi),
            "run": np.tile(np.asarray(signals["run"].values), n_roi),
            "volume": np.tile(volume, n_roi),
            "time_s": np.tile(np.asarray(signals["time"].values, dtype=np.float64), n_roi),
            "value": values.ravel(),
        }
    )


def _fold_frame(signals: xr.DataArray) -> pd.DataFrame:
    if "signal_volume" not in signals.coords:
        raise InvalidParameterError(
            "signals: (fold, roi, time) signals need the 'signal_volume' coordinate (fold, time)",
            param="signals",
        )
    frames = []
    for k in range(signals.sizes["fold"]):
        fold = signals.isel(fold=k).drop_vars("signal_volume")
        fold = fold.isel(time=np.flatnonzero(np.asarray(signals["signal_volume"][k].values)))
        has = ~np.isnan(np.asarray(fold.transpose("roi", "time").values)).all(axis=1)
        frame = signals_to_frame(fold.isel(roi=np.flatnonzero(has)))
        frames.append(frame.assign(**{FOLD_COLUMN: int(signals["fold"].values[k])}))
    frame = pd.concat(frames, ignore_index=True)
    return frame[[FOLD_COLUMN, *SIGNALS_COLUMNS]]


def write_signals_tsv(
    signals: xr.DataArray | pd.DataFrame,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ROI signals as ``signals.tsv``, atomically.

    Parameters
    ----------
    signals : xarray.DataArray or pandas.DataFrame
        ``(roi, time)`` signals (see :func:`signals_to_frame`) or that frame.
    path : str or path-like
        Output ``.tsv`` file.
    overwrite : bool
        Replace an existing file (default: refuse, checked before computing).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    _check_target(path, overwrite, "path")
    frame = signals if isinstance(signals, pd.DataFrame) else signals_to_frame(signals)
    columns = list(SIGNALS_COLUMNS)
    if FOLD_COLUMN in frame.columns:
        columns.insert(0, FOLD_COLUMN)
    return _write(frame[columns], path)


def read_signals_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``signals.tsv`` written by :func:`write_signals_tsv`.

    Parameters
    ----------
    path : str or path-like
        The ``signals.tsv`` file.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SIGNALS_COLUMNS` (``time_s`` in seconds), after a ``fold``
        column for results in folds; ``n/a`` cells are NaN.

    Raises
    ------
    UnreadableFileError, CorruptFileError
        ``path`` is missing, unreadable or empty.
    """
    path = check_input_file(path, "path", what="signals table")
    return pd.read_csv(path, sep="\t", na_values=[_NA], keep_default_na=False)


# -- ROI tables ----------------------------------------------------------------------------
def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    for col in out.columns:
        if col.endswith("_mm") or col.endswith("_mm3"):
            out[col] = out[col].round(MM_DECIMALS)
    return out


def write_roi_table(
    table: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write an ROI table (:data:`ROI_TABLE_COLUMNS`) as ``rois.tsv``, atomically.

    Positions and volumes (``*_mm``, ``*_mm3``) are rounded to a micrometre
    (:data:`MM_DECIMALS`); values keep :data:`VALUE_DIGITS` significant digits.
    The tables of folds have a leading ``fold`` column.

    Parameters
    ----------
    table : pandas.DataFrame
        An ROI table (:func:`roidask.ops.roi_table`): columns
        :data:`ROI_TABLE_COLUMNS` (positions in mm, volumes in mm^3), after a ``fold``
        column for results in folds.
    path : str or path-like
        Output ``.tsv`` file.
    overwrite : bool
        Replace an existing file (default: refuse).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InvalidParameterError
        ``table`` is not a DataFrame with these columns.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputError
        The parent folder of ``path`` is missing or not writable.
    """
    path = Path(path)
    columns = list(table.columns) if isinstance(table, pd.DataFrame) else None
    if columns and columns[0] == FOLD_COLUMN:
        columns = columns[1:]
    if columns != list(ROI_TABLE_COLUMNS):
        got = list(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
        raise InvalidParameterError(
            f"table: expected an ROI table with columns {list(ROI_TABLE_COLUMNS)} (after "
            f"{FOLD_COLUMN!r} for folds), got {got}",
            param="table",
        )
    _check_target(path, overwrite, "path")
    return _write(_rounded(table), path)


def read_roi_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``rois.tsv`` written by :func:`write_roi_table`.

    Parameters
    ----------
    path : str or path-like
        The ``rois.tsv`` file.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`ROI_TABLE_COLUMNS` (positions in mm, volumes in mm^3), after a
        ``fold`` column for results in folds; ``n/a`` cells are NaN.

    Raises
    ------
    UnreadableFileError, CorruptFileError
        ``path`` is missing, unreadable or empty.
    """
    path = check_input_file(path, "path", what="ROI table")
    return pd.read_csv(path, sep="\t", na_values=[_NA], keep_default_na=False)


# -- folds ---------------------------------------------------------------------------------
def write_folds_tsv(
    table: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write the folds of results in folds (:data:`FOLDS_COLUMNS`) as ``folds.tsv``, atomically.

    One row per fold: ``fold``, ``roi_runs`` and ``signal_runs`` (run values,
    space-separated) and ``n_rois``.
    """
    path = Path(path)
    if not isinstance(table, pd.DataFrame) or list(table.columns) != list(FOLDS_COLUMNS):
        got = list(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
        raise InvalidParameterError(
            f"table: expected a folds table with columns {list(FOLDS_COLUMNS)}, got {got}",
            param="table",
        )
    _check_target(path, overwrite, "path")
    return _write(table, path)
