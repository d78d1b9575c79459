"""run_subject: the destination checked first; the temporary store of a cluster run is a
locked sibling of the output that the next command removes if this one is killed."""

from __future__ import annotations

import pytest
from helpers.lazy import voxel_reads

from roidask.exceptions import OutputError
from roidask.pipeline import PipelineParams
from roidask.runner import run_subject


def test_the_destination_is_checked_before_any_voxel_is_read(haxby, tmp_path):
    with voxel_reads() as reads, pytest.raises(OutputError, match=r"parent folder .* does not"):
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=tmp_path / "results" / "subj2",
                    params=PipelineParams())  # fmt: skip
    assert reads == []
