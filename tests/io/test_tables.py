"""signals.tsv and rois.tsv: one writer and reader each."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

from roidask.exceptions import EmptyMaskWarning, OutputExistsError
from roidask.io.tables import signals_to_frame, write_signals_tsv
from roidask.ops.conditions import select_condition
from roidask.ops.extract import extract_signals


def computed(signals):
    with dask.config.set(scheduler="sync"):
        return signals.values


def test_signals_to_frame_and_tsv(haxby_bold, seed_rois, tmp_path):
    signals = extract_signals(haxby_bold, seed_rois)
    values = computed(signals)
    frame = signals_to_frame(signals)
    assert list(frame.columns) == ["roi", "condition", "run", "volume", "time_s", "value"]
    assert len(frame) == 5 * 1452
    row = frame.iloc[1452 * 2 + 7]
    assert (row.roi, row.volume, row.run, row.time_s) == (3, 7, 0, 7 * 2.5)
    assert row.condition == haxby_bold["condition"].values[7]
    assert row.value == values[2, 7]
    face = signals_to_frame(select_condition(signals, condition="face"))
    assert (face["condition"] == "face").all() and len(face) == 5 * 108
    np.testing.assert_array_equal(
        face["volume"].unique(), np.flatnonzero(haxby_bold["condition"].values == "face")
    )

    path = tmp_path / "signals.tsv"
    assert write_signals_tsv(signals, path) == path
    assert [p.name for p in tmp_path.iterdir()] == ["signals.tsv"]
    pd.testing.assert_frame_equal(pd.read_csv(path, sep="\t"), frame)
    with pytest.raises(OutputExistsError, match=r"signals\.tsv"):
        write_signals_tsv(signals, path)
    write_signals_tsv(signals.isel(roi=[0]), path, overwrite=True)
    assert len(pd.read_csv(path, sep="\t")) == 1452


def test_tsv_writes_nan_as_na(haxby_bold, seed_rois, tmp_path):
    with pytest.warns(EmptyMaskWarning):
        signals = extract_signals(haxby_bold, seed_rois, labels=[1, 77])
    path = write_signals_tsv(signals, tmp_path / "s.tsv")
    table = pd.read_csv(path, sep="\t")
    assert table.loc[table["roi"] == 77, "value"].isna().all()
    assert "n/a" in path.read_text()


def roi_table(**values):
    from roidask.io.tables import ROI_TABLE_COLUMNS

    row = dict.fromkeys(ROI_TABLE_COLUMNS, 1.0)
    row.update(label=1, n_voxels=3, **values)
    return pd.DataFrame([row], columns=list(ROI_TABLE_COLUMNS))


def test_roi_table_positions_are_rounded_to_a_micrometre(tmp_path):
    from roidask.io.tables import read_roi_table, write_roi_table

    table = roi_table(
        volume_mm3=156.24999999999997,  # 3 voxels of 3.125 x 3.75 x 3.75 mm, float error
        com_x_mm=-17.123456789,
        peak_y_mm=16.9e-12,
        peak_value=7.351234567891,
        mean_value=float("nan"),
    )
    path = write_roi_table(table, tmp_path / "rois.tsv")
    text = path.read_text().splitlines()[1].split("\t")
    assert text[2:4] == ["156.25", "-17.123"]
    assert text[7] == "0"  # -0.0 / 1e-11 mm: a micrometre is the resolution
    assert text[9:] == ["7.35123457", "n/a"]  # values: 9 significant digits; NaN: n/a
    back = read_roi_table(path)
    assert back.loc[0, "com_x_mm"] == -17.123 and np.isnan(back.loc[0, "mean_value"])


def test_roi_table_columns_are_checked(tmp_path):
    from roidask.exceptions import InvalidParameterError
    from roidask.io.tables import write_roi_table

    with pytest.raises(InvalidParameterError, match=r"^table: expected an ROI table with columns"):
        write_roi_table(pd.DataFrame({"label": [1]}), tmp_path / "rois.tsv")
    assert list(tmp_path.iterdir()) == []
