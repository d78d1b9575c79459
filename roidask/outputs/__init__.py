"""Outputs of a run: the subject folder writer, its tables and its provenance."""

from roidask.outputs.provenance import file_sha256, input_records, provenance_record
from roidask.outputs.writer import OUTPUT_FILES, prepare_output, write_results

__all__ = [
    "OUTPUT_FILES",
    "file_sha256",
    "input_records",
    "prepare_output",
    "provenance_record",
    "write_results",
]
