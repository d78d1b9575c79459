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
    face = signals_to_frame(select_condition(signals, "face"))
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
