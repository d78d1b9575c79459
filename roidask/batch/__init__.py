"""Many subjects on one dask cluster: manifests, scheduling and resume, the group level."""

from roidask.batch.group import (
    GroupPermutation,
    GroupPlan,
    group_from,
    group_level,
    prepare_group,
)
from roidask.batch.manifest import SubjectSpec, check_subjects, current_subject, read_manifest
from roidask.batch.schedule import (
    GRANULARITIES,
    check_batch_folder,
    fingerprint,
    run_batch,
)

__all__ = [
    "GRANULARITIES",
    "GroupPermutation",
    "GroupPlan",
    "SubjectSpec",
    "check_batch_folder",
    "check_subjects",
    "current_subject",
    "fingerprint",
    "group_from",
    "group_level",
    "prepare_group",
    "read_manifest",
    "run_batch",
]
