"""Many subjects on one dask cluster: manifests, scheduling and resume, the group level."""

from roidask.batch.group import GroupPermutation, group_from, group_level
from roidask.batch.manifest import SubjectSpec, check_subjects, read_manifest
from roidask.batch.schedule import GRANULARITIES, check_batch_folder, fingerprint, run_batch

__all__ = [
    "GRANULARITIES",
    "GroupPermutation",
    "SubjectSpec",
    "check_batch_folder",
    "check_subjects",
    "fingerprint",
    "group_from",
    "group_level",
    "read_manifest",
    "run_batch",
]
