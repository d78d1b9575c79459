"""Many subjects on one dask cluster: manifests, scheduling and resume, the group level."""

from roidask.batch.group import group_level
from roidask.batch.manifest import SubjectSpec, read_manifest
from roidask.batch.schedule import GRANULARITIES, fingerprint, run_batch

__all__ = [
    "GRANULARITIES",
    "SubjectSpec",
    "fingerprint",
    "group_level",
    "read_manifest",
    "run_batch",
]
