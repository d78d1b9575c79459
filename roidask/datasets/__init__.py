"""Sample data: the bundled Haxby slice, a synthetic-subject generator, fetchers."""

from roidask.datasets.fetch import HaxbyDataset, HaxbySubject, fetch_haxby
from roidask.datasets.haxby_slice import HaxbySlice, haxby_slice
from roidask.datasets.synthetic import (
    SyntheticSubject,
    haxby_condition_sequence,
    make_synthetic_dataset,
    make_synthetic_subject,
)

__all__ = [
    "HaxbyDataset",
    "HaxbySlice",
    "HaxbySubject",
    "SyntheticSubject",
    "fetch_haxby",
    "haxby_condition_sequence",
    "haxby_slice",
    "make_synthetic_dataset",
    "make_synthetic_subject",
]
