"""run_subject: the destination checked first; the temporary store of a cluster run is a
locked sibling of the output that the next command removes if this one is killed."""

from __future__ import annotations

import re

import pytest
from helpers.lazy import voxel_reads

from roidask import runner
from roidask.exceptions import OutputError
from roidask.pipeline import PipelineParams
from roidask.runner import run_subject


def test_the_destination_is_checked_before_any_voxel_is_read(haxby, tmp_path):
    with voxel_reads() as reads, pytest.raises(OutputError, match=r"parent folder .* does not"):
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=tmp_path / "results" / "subj2",
                    params=PipelineParams())  # fmt: skip
    assert reads == []


def test_the_cluster_path_converts_into_a_locked_sibling(haxby, tmp_path, monkeypatch):
    """With a cluster, .nii.gz runs go through a store built in ``.<out>.roidask-tmp-*``:
    a name clean_stale removes after a kill (locked while in use), removed when done."""
    seen = []
    real_convert = runner.convert

    def convert(*args, out, **kwargs):
        seen.append(out)
        return real_convert(*args, out=out, **kwargs)

    monkeypatch.setattr(runner, "active_client", lambda: object())  # as if on a cluster
    monkeypatch.setattr(runner, "convert", convert)
    out = tmp_path / "out"
    run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                mask=haxby.mask, out=out, params=PipelineParams(), plots=False)  # fmt: skip
    (store,) = seen
    assert re.fullmatch(r"\.out\.roidask-tmp-\d+-[0-9a-f]{8}", store.parent.name)
    assert store.parent.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
