"""Lazy operators on roidask images: smoothing, statistics, masks, ROIs, extraction."""
