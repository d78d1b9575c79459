"""Sample data: the bundled Haxby slice, a synthetic-subject generator, fetchers."""

from roidask.datasets.haxby_slice import HaxbySlice, haxby_slice

__all__ = ["HaxbySlice", "haxby_slice"]
