"""One study store for a batch's results: Icechunk vs plain zarr v3 with completion markers.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_study_store.py [--rounds 5] [--subjects 8]
        [--kill-trials 30] [--writers 4] [--concurrent-rounds 5] [--s3]
        [--strategies zarr-prefix,icechunk,...] [--growth-subjects 40]
        [--sections plain-open,write,growth,tags,kill,kill-overwrite,concurrent]

(default sections: all but ``growth``; default stores: the local ones, plus the ``-s3``
ones with ``--s3``; ``zarr-inplace-incr`` only when named).

Each subject's payload is what a roidask run produces: three float32 maps and two
uint8 masks of 40x64x64, an int32 atlas, signals of 5 ROIs x 1452 volumes (float64)
with string/int/float coordinates along time, and an ROI table (int, float, string
columns). Every payload is regenerated from its subject's name, so a reader can check
every visible subject value by value.

Strategies (``--s3`` adds the ``*-s3`` ones, on a local moto server):

``zarr-rename``
    The subject is written as a group of a temporary store beside ``study.zarr``,
    marked ``complete``, moved into the store with one ``os.rename``, and the root
    metadata is consolidated with complete subjects only (``zarr.consolidate_metadata``
    would also list leftovers such as a ``.sub-01.old-*`` group). Local file systems
    only (object stores have no rename).
``zarr-inplace`` / ``zarr-inplace-s3``
    The subject group is written in place, its ``complete`` attribute set last, then
    the root metadata is consolidated *with complete subjects only* (so a plain
    ``xr.open_datatree(path, engine="zarr")``, which uses consolidated metadata, sees
    only them). Before overwriting a subject it is first dropped from the consolidated
    metadata. Works on any zarr store (here obstore's ``ObjectStore`` on S3).
``zarr-prefix`` / ``zarr-prefix-s3``
    The subject is written as a zarr store of its own at ``<study>/<subject>`` (so
    the write never opens the study root), marked ``complete``; then *one* process
    adds it to the root's consolidated metadata (O(1) per subject). In the
    ``concurrent`` section the writers only write and the parent publishes.
``roidask``
    ``zarr-prefix`` as ``roidask batch`` does it (:mod:`roidask.outputs.study`): the
    node's files written from memory, its ``zarr.json`` last; the root's consolidated
    metadata updated as JSON (one read of the node's ``zarr.json``, one atomic rewrite).
``zarr-inplace-incr`` (only when named in ``--strategies``)
    As ``zarr-inplace``, but the consolidation adds the new subject's nodes to the
    root's consolidated metadata instead of re-reading every node (O(1) per subject;
    a read-modify-write, so for one consolidating process only: the batch driver).
``icechunk`` / ``icechunk-s3``
    An Icechunk repository (local file system / S3); one writable session and one
    commit per subject on branch ``main``; a commit that loses the race to another
    writer is rebased (``ConflictDetector``: fails on a real conflict) and retried.

Sections:

``plain-open``  can ``xr.open_datatree(path, engine="zarr")`` open each store with no
                store-specific code?
``write``       wall time per subject (median of ``--rounds`` x ``--subjects``; first
                and last subject separately: consolidation reads every node's
                metadata, so it grows with the store).
                The same run then reads the store back with ``xr.open_datatree``
                (open, and open + load).
``growth``      write time of subject 1, N/4, N/2, N while one store grows to
                ``--growth-subjects`` (consolidating everything is O(N) per subject).
``tags``        Icechunk tags: cost of ``create_tag`` per subject, reading at a tag.
``kill``        a writer process writing ``--kill-subjects`` subjects is SIGKILLed at a
                random moment, ``--kill-trials`` times per strategy (fresh store each
                time); then: is the store readable, are only complete and correct
                subjects visible, does a rerun (writing the subjects not visible)
                finish them all? Scenario ``overwrite``: the writer replaces subjects
                that are already complete (must show old or new data, never a mix).
``concurrent``  ``--writers`` processes write disjoint subjects into one store at the
                same moment, ``--concurrent-rounds`` times: subjects lost, data
                corrupt, Icechunk conflicts and rebases. For ``zarr-prefix`` the
                writers only write; this (driver) process publishes each subject as
                its writer reports it done, as a batch's client would.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
import zlib
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
SHAPE = (40, 64, 64)
N_VOLUMES = 1452
N_ROIS = 5
COMPLETE = "complete"
LOCAL = ("zarr-rename", "zarr-inplace", "zarr-prefix", "roidask", "icechunk")
EXTRA = ("zarr-inplace-incr",)  # only with --strategies
S3 = ("zarr-inplace-s3", "zarr-prefix-s3", "icechunk-s3")

warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
warnings.filterwarnings("ignore", message="Object at .* is not recognized")


# -- payload -------------------------------------------------------------------------
def payload(subject: str, version: int = 0) -> xr.Dataset:
    """A subject's results, reproducible from its name (and a version for overwrites)."""
    rng = np.random.default_rng(zlib.crc32(f"{subject}/{version}".encode()))
    spatial = ("x", "y", "z")
    conditions = np.array(["rest", "face", "house", "cat", "shoe", "chair", "bottle"])
    atlas = np.zeros(SHAPE, np.int32)
    for label in range(1, N_ROIS + 1):
        x, y, z = rng.integers(5, 30), rng.integers(5, 55), rng.integers(5, 55)
        atlas[x : x + 4, y : y + 6, z : z + 6] = label
    ds = xr.Dataset(
        {
            "mean_epi": (spatial, (rng.random(SHAPE, dtype=np.float32) * 1000)),
            "tstat": (spatial, rng.standard_normal(SHAPE, dtype=np.float32)),
            "logp": (spatial, rng.random(SHAPE, dtype=np.float32) * 5),
            "roi_mask": (spatial, (rng.random(SHAPE) > 0.99).astype(np.uint8)),
            "dilated_mask": (spatial, (rng.random(SHAPE) > 0.98).astype(np.uint8)),
            "atlas": (spatial, atlas),
            "signals": (("roi", "time"), rng.standard_normal((N_ROIS, N_VOLUMES))),
            "roi_n_voxels": ("roi", rng.integers(10, 500, N_ROIS)),
            "roi_volume_mm3": ("roi", rng.random(N_ROIS) * 1e4),
            "roi_peak_logp": ("roi", rng.random(N_ROIS) * 10),
            "roi_name": ("roi", np.array([f"roi-{i}" for i in range(N_ROIS)], dtype=object)),
        },
        coords={
            "roi": np.arange(1, N_ROIS + 1),
            "time": np.arange(N_VOLUMES) * 2.5,
            "condition": ("time", conditions[rng.integers(0, 7, N_VOLUMES)].astype(object)),
            "run": ("time", np.repeat(np.arange(12), N_VOLUMES // 12)),
        },
        attrs={"subject": subject, "version": version, "params": json.dumps({"fwhm": 4})},
    )
    return ds


def matches(ds: xr.Dataset, subject: str) -> int | None:
    """The payload version ``ds`` equals exactly (0 or 1), or None (corrupt / mixed)."""
    for version in (0, 1):
        expected = payload(subject, version)
        if all(
            np.array_equal(np.asarray(ds[k].values), np.asarray(expected[k].values))
            for k in expected.variables
        ):
            return version
    return None


# -- stores --------------------------------------------------------------------------
def obstore_zarr(url: str, *, read_only: bool = False):
    """A zarr store on S3 from an ``s3://bucket/prefix`` URL, credentials from the env."""
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    return ObjectStore(S3Store.from_url(url), read_only=read_only)


def _consolidate_complete(store, *, drop: str | None = None) -> None:
    """Consolidate the root metadata with complete subject groups only (minus ``drop``)."""
    from zarr.core.group import ConsolidatedMetadata, GroupMetadata
    from zarr.core.sync import sync

    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    flat = {}
    complete = {
        name
        for name, g in root.groups()
        if g.attrs.get(COMPLETE) is True and name != drop and not name.startswith(".")
    }
    for key, node in root.members(max_depth=None, use_consolidated_for_children=False):
        if key.split("/")[0] in complete:
            meta = node.metadata
            if isinstance(meta, GroupMetadata) and meta.consolidated_metadata is None:
                meta = dataclasses.replace(meta, consolidated_metadata=ConsolidatedMetadata({}))
            flat[key] = meta
    ConsolidatedMetadata._flat_to_nested(flat)
    group = root._async_group
    metadata = dataclasses.replace(
        group.metadata, consolidated_metadata=ConsolidatedMetadata(metadata=flat)
    )
    sync(dataclasses.replace(group, metadata=metadata)._save_metadata())


class Strategy:
    name = ""

    def __init__(self, target: str):
        self.target = target
        self.info: dict = {}

    def init(self) -> None:
        raise NotImplementedError

    def write(self, subject: str, ds: xr.Dataset) -> None:
        raise NotImplementedError

    def open_tree(self) -> xr.DataTree:
        raise NotImplementedError

    def plain_path(self) -> str:
        return self.target

    def cleanup(self) -> None:
        if not self.target.startswith("s3://"):
            shutil.rmtree(self.target, ignore_errors=True)
            for tmp in Path(self.target).parent.glob(f".{Path(self.target).name}.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def garbage_bytes(self) -> int:
        """Bytes left by interrupted writes in temporary stores beside the store.

        Not counted: a partial subject group inside a zarr store (overwritten by the
        rerun) and an Icechunk session's uncommitted chunks (unreferenced objects inside
        the repository until ``expire_snapshots`` + ``garbage_collect``).
        """
        if self.target.startswith("s3://"):
            return 0
        total = 0
        for tmp in Path(self.target).parent.glob(f".{Path(self.target).name}.tmp-*"):
            total += sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        return total


class ZarrRename(Strategy):
    name = "zarr-rename"

    def init(self) -> None:
        zarr.open_group(self.target, mode="w", zarr_format=3).attrs["study"] = 1
        _consolidate_complete(self.target)

    def write(self, subject: str, ds: xr.Dataset) -> None:
        out = Path(self.target)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
        ds.to_zarr(str(tmp), group=subject, mode="w", zarr_format=3, consolidated=False)
        zarr.open_group(str(tmp / subject), mode="r+").attrs[COMPLETE] = True
        target = out / subject
        old = None
        if target.exists():  # unpublish, then move the old version out of the store
            _consolidate_complete(str(out), drop=subject)
            old = tmp / f"{subject}.old"
            os.rename(target, old)
        os.rename(tmp / subject, target)
        _consolidate_complete(str(out))
        shutil.rmtree(tmp)

    def open_tree(self) -> xr.DataTree:
        return xr.open_datatree(self.target, engine="zarr")


class ZarrInplace(Strategy):
    name = "zarr-inplace"

    def store(self, read_only: bool = False):
        return self.target

    def init(self) -> None:
        zarr.open_group(self.store(), mode="w", zarr_format=3).attrs["study"] = 1
        _consolidate_complete(self.store())

    def write(self, subject: str, ds: xr.Dataset) -> None:
        store = self.store()
        root = zarr.open_group(store, mode="r")  # consolidated view: what readers see
        if subject in root:  # unpublish before overwriting
            _consolidate_complete(store, drop=subject)
        ds.to_zarr(store, group=subject, mode="w", zarr_format=3, consolidated=False)
        zarr.open_group(store, path=subject, mode="r+", use_consolidated=False).attrs[COMPLETE] = (
            True
        )
        _consolidate_complete(store)

    def open_tree(self) -> xr.DataTree:
        return xr.open_datatree(self.store(read_only=True), engine="zarr")


def _consolidate_add(store, subject: str) -> None:
    """Add one complete subject to the root's consolidated metadata (reads only its nodes).

    Read-modify-write of the root ``zarr.json``: safe when one process (the batch's
    driver) does it, racy when several writers do.
    """
    from zarr.core.group import ConsolidatedMetadata, GroupMetadata
    from zarr.core.sync import sync

    root = zarr.open_group(store, mode="r+", use_consolidated=True)
    sub = zarr.open_group(store, path=subject, mode="r", use_consolidated=False)
    flat = {subject: sub.metadata}
    for key, node in sub.members(max_depth=None, use_consolidated_for_children=False):
        flat[f"{subject}/{key}"] = node.metadata
    for key, meta in flat.items():
        if isinstance(meta, GroupMetadata) and meta.consolidated_metadata is None:
            flat[key] = dataclasses.replace(meta, consolidated_metadata=ConsolidatedMetadata({}))
    ConsolidatedMetadata._flat_to_nested(flat)
    group = root._async_group
    existing = dict(group.metadata.consolidated_metadata.metadata)
    existing.pop(subject, None)
    existing.update(flat)
    metadata = dataclasses.replace(
        group.metadata, consolidated_metadata=ConsolidatedMetadata(metadata=existing)
    )
    sync(dataclasses.replace(group, metadata=metadata)._save_metadata())


class ZarrInplaceIncremental(ZarrInplace):
    """As ``zarr-inplace``, but the consolidation adds the new subject to what is there."""

    name = "zarr-inplace-incr"

    def write(self, subject: str, ds: xr.Dataset) -> None:
        store = self.store()
        root = zarr.open_group(store, mode="r")
        if subject in root:
            _consolidate_complete(store, drop=subject)
        ds.to_zarr(store, group=subject, mode="w", zarr_format=3, consolidated=False)
        zarr.open_group(store, path=subject, mode="r+", use_consolidated=False).attrs[COMPLETE] = (
            True
        )
        _consolidate_add(store, subject)


class ZarrPrefix(ZarrInplace):
    """Subject written as a store of its own at ``<study>/<subject>``; published by one process.

    Writing at the subject's prefix never opens the study root (whose consolidated
    metadata grows with every subject and is parsed by zarr whenever the root is
    opened), so a subject's write costs the same in an empty or a big study. Workers
    call :meth:`write_subject`; one process (the batch driver) calls :meth:`publish`,
    which adds the subject to the root's consolidated metadata (:func:`_consolidate_add`).
    """

    name = "zarr-prefix"
    driver_publishes = True

    def subject_store(self, subject: str):
        from zarr.storage import LocalStore

        return LocalStore(f"{self.target}/{subject}")

    def unpublish(self, subject: str) -> None:
        """Before replacing a subject (driver side): drop it from what readers see."""
        if subject in zarr.open_group(self.store(), mode="r"):
            _consolidate_complete(self.store(), drop=subject)

    def write_subject(self, subject: str, ds: xr.Dataset) -> None:
        """Encode the subject in memory, then put its objects concurrently, group last.

        zarr writes each array's metadata and chunks in turn (one round trip each); the
        objects of a ~3 MB subject are put at once instead. The group's ``zarr.json``
        (carrying ``complete``) goes last, so even a reader that lists the store
        without consolidated metadata sees no group until every object is there.
        """
        import asyncio

        from zarr.core.sync import sync
        from zarr.storage import MemoryStore

        files: dict = {}
        memory = MemoryStore(files)
        ds.to_zarr(memory, mode="w", zarr_format=3, consolidated=False)
        zarr.open_group(memory, mode="r+").attrs[COMPLETE] = True
        store = self.subject_store(subject)
        group_meta = files.pop("zarr.json")

        async def put_all():
            await store.delete_dir("")  # a previous, unpublished version
            await asyncio.gather(*(store.set(k, v) for k, v in files.items()))
            await store.set("zarr.json", group_meta)

        sync(put_all())

    def publish(self, subject: str) -> None:
        _consolidate_add(self.store(), subject)

    def write(self, subject: str, ds: xr.Dataset) -> None:
        self.unpublish(subject)
        self.write_subject(subject, ds)
        self.publish(subject)


class RoidaskStudy(ZarrPrefix):
    """``zarr-prefix`` as roidask implements it (:mod:`roidask.outputs.study`).

    The node is written file by file from its in-memory encoding, ``zarr.json`` last
    (:func:`~roidask.outputs.study.write_node`); publishing adds the node's consolidated
    metadata to the root's ``zarr.json`` as JSON (one file read, one atomic rewrite).
    """

    name = "roidask"

    def init(self) -> None:
        from roidask.outputs.study import prepare_study

        prepare_study(self.target)

    def unpublish(self, subject: str) -> None:
        from roidask.outputs.study import unpublish

        unpublish(self.target, subject)

    def write_subject(self, subject: str, ds: xr.Dataset) -> None:
        from roidask.outputs.study import write_node

        write_node(self.target, subject, ds)

    def publish(self, subject: str) -> None:
        from roidask.outputs.study import publish

        publish(self.target, subject)


class ZarrPrefixS3(ZarrPrefix):
    name = "zarr-prefix-s3"

    def store(self, read_only: bool = False):
        return obstore_zarr(self.target, read_only=read_only)

    def subject_store(self, subject: str):
        return obstore_zarr(f"{self.target}/{subject}")

    def cleanup(self) -> None:
        pass


class ZarrInplaceS3(ZarrInplace):
    name = "zarr-inplace-s3"

    def store(self, read_only: bool = False):
        return obstore_zarr(self.target, read_only=read_only)

    def cleanup(self) -> None:
        pass


class Icechunk(Strategy):
    name = "icechunk"

    def storage(self):
        import icechunk as ic

        return ic.local_filesystem_storage(self.target)

    def repo(self):
        import icechunk as ic

        if not hasattr(self, "_repo"):
            self._repo = ic.Repository.open(self.storage())
        return self._repo

    def init(self) -> None:
        import icechunk as ic

        self._repo = ic.Repository.create(self.storage())
        session = self._repo.writable_session("main")
        zarr.open_group(session.store, mode="w", zarr_format=3).attrs["study"] = 1
        session.commit("study root")

    def write(self, subject: str, ds: xr.Dataset, *, tag: bool = False) -> None:
        import icechunk as ic

        session = self.repo().writable_session("main")
        root = zarr.open_group(session.store, mode="r+")
        if subject in root:  # replaced in the same commit: readers see old or new
            del root[subject]
        # mode="w" would re-create the root group too, which conflicts with every other
        # writer's commit (NewNodeConflictsWithExistingNode at "/"); "w-" creates the
        # subject group only.
        ds.to_zarr(session.store, group=subject, mode="w-", zarr_format=3, consolidated=False)
        conflicts = 0
        while True:
            try:
                snapshot = session.commit(f"write {subject}")
                break
            except ic.ConflictError as e:
                conflicts += 1
                self.info.setdefault("conflict_messages", []).append(str(e).splitlines()[0])
                session.rebase(ic.ConflictDetector())
        self.info["conflicts"] = self.info.get("conflicts", 0) + conflicts
        if tag:
            self.repo().create_tag(subject, snapshot)

    def open_tree(self, **version) -> xr.DataTree:
        session = self.repo().readonly_session(**(version or {"branch": "main"}))
        return xr.open_datatree(session.store, engine="zarr", consolidated=False)


class IcechunkS3(Icechunk):
    name = "icechunk-s3"

    def storage(self):
        import icechunk as ic

        bucket, _, prefix = self.target.removeprefix("s3://").partition("/")
        return ic.s3_storage(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=os.environ["AWS_ENDPOINT_URL"],
            allow_http=True,
            force_path_style=True,
            from_env=True,
        )

    def cleanup(self) -> None:
        pass


STRATEGIES = {
    s.name: s
    for s in (
        ZarrRename,
        ZarrInplace,
        ZarrInplaceIncremental,
        ZarrPrefix,
        RoidaskStudy,
        ZarrInplaceS3,
        ZarrPrefixS3,
        Icechunk,
        IcechunkS3,
    )
}


def visible(strategy: Strategy) -> dict[str, int | None]:
    """Subjects a reader sees, each mapped to the payload version it matches (None: corrupt)."""
    tree = strategy.open_tree()
    out = {}
    for name, node in tree.children.items():
        try:
            out[name] = matches(node.to_dataset().load(), name)
        except Exception:
            out[name] = None
    return out


# -- child processes -----------------------------------------------------------------
def child(args: argparse.Namespace) -> int:
    """Write subjects (a kill or concurrency trial); report on stdout as JSON lines."""
    import icechunk as ic

    ic.set_logs_filter("error")
    strat = STRATEGIES[args.strategy](args.target)
    subjects = args.child_subjects.split(",")
    payloads = {s: payload(s, args.child_version) for s in subjects}
    print(json.dumps({"ready": True}), flush=True)
    if args.child_go:
        while not Path(args.child_go).exists():
            time.sleep(0.001)
    start = time.perf_counter()
    for s in subjects:
        if args.child_no_publish:  # the parent (driver) publishes
            strat.write_subject(s, payloads[s])
        else:
            strat.write(s, payloads[s])
        print(json.dumps({"done": s, "t": time.perf_counter() - start}), flush=True)
    print(json.dumps({"info": strat.info, "t": time.perf_counter() - start}), flush=True)
    return 0


def spawn(
    strategy: str, target: str, subjects: list[str], *, version=0, go=None, no_publish=False
):
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--strategy",
        strategy,
        "--target",
        target,
        "--child-subjects",
        ",".join(subjects),
        "--child-version",
        str(version),
    ]
    if go:
        cmd += ["--child-go", go]
    if no_publish:
        cmd += ["--child-no-publish"]
    log = Path(tempfile.gettempdir()) / f"study-bench-child-{uuid.uuid4().hex[:8]}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
    proc.log = log
    line = proc.stdout.readline()
    if not line.startswith('{"ready"'):
        proc.kill()
        raise RuntimeError(f"child {strategy} failed to start: {log.read_text()[-2000:]}")
    return proc


def finish(proc, lines: list[str] | None = None) -> dict | None:
    """Wait for a child; its last report, or None (the tail of its log is printed).

    ``lines``: its stdout, when already read (by :func:`drive`).
    """
    if lines is None:
        out, _ = proc.communicate(timeout=600)
        lines = out.strip().splitlines()
    else:
        proc.wait(timeout=600)
    last = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or "info" not in last:
        print(f"  writer failed: {proc.log.read_text()[-1500:]}", file=sys.stderr)
        last = None
    proc.log.unlink(missing_ok=True)
    return last


# -- sections ------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(flush=True)


def new_target(strategy: str, root: Path, bucket: str | None) -> Strategy:
    name = f"study-{uuid.uuid4().hex[:8]}"
    if strategy.endswith("-s3"):
        return STRATEGIES[strategy](f"{bucket}/{name}.zarr")
    return STRATEGIES[strategy](str(root / f"{name}.zarr"))


def subjects_list(n: int) -> list[str]:
    return [f"sub-{i:02d}" for i in range(1, n + 1)]


def section_plain_open(strategies, root, bucket) -> None:
    print("## Can plain `xr.open_datatree(path, engine='zarr')` open the store?\n")
    rows = []
    for name in strategies:
        strat = new_target(name, root, bucket)
        strat.init()
        strat.write("sub-01", payload("sub-01"))
        try:
            tree = xr.open_datatree(strat.plain_path(), engine="zarr")
            result = f"yes: children {sorted(tree.children)}"
        except Exception as e:
            result = f"no: {type(e).__name__}: {str(e).splitlines()[0][:90]}"
        rows.append([name, strat.plain_path().replace(str(root), "TMP"), result])
        strat.cleanup()
    table(["store", "path", "plain open_datatree"], rows)


def section_write_read(strategies, root, bucket, rounds, n_subjects) -> None:
    subjects = subjects_list(n_subjects)
    payloads = {s: payload(s) for s in subjects}
    write_rows, read_rows = [], []
    for name in strategies:
        per_subject, first, last, open_s, load_s = [], [], [], [], []
        for _ in range(rounds):
            strat = new_target(name, root, bucket)
            strat.init()
            times = []
            for s in subjects:
                start = time.perf_counter()
                strat.write(s, payloads[s])
                times.append(time.perf_counter() - start)
            per_subject += times
            first.append(times[0])
            last.append(times[-1])
            start = time.perf_counter()
            tree = strat.open_tree()
            open_s.append(time.perf_counter() - start)
            tree.load()
            load_s.append(time.perf_counter() - start)
            assert sorted(tree.children) == subjects, sorted(tree.children)
            strat.cleanup()
        med = statistics.median
        write_rows.append(
            [
                name,
                f"{med(per_subject) * 1e3:.0f}",
                f"{min(per_subject) * 1e3:.0f}-{max(per_subject) * 1e3:.0f}",
                f"{med(first) * 1e3:.0f}",
                f"{med(last) * 1e3:.0f}",
            ]
        )
        read_rows.append([name, f"{med(open_s) * 1e3:.0f}", f"{med(load_s) * 1e3:.0f}"])
    mb = sum(v.nbytes for v in payloads[subjects[0]].variables.values()) / 2**20
    print(
        f"## Write: ms per subject ({rounds} rounds x {n_subjects} subjects, "
        f"{mb:.1f} MB raw each)\n"
    )
    table(
        ["store", "median", "range", f"subject 1 (median of {rounds})", f"subject {n_subjects}"],
        write_rows,
    )
    print(f"## Read the whole tree ({n_subjects} subjects): ms, median of {rounds}\n")
    table(["store", "open_datatree", "open + load"], read_rows)


def section_growth(strategies, root, bucket, n_subjects) -> None:
    """Write time of subject k as the store grows (one run of ``n_subjects``)."""
    subjects = subjects_list(n_subjects)
    marks = sorted({1, n_subjects // 4, n_subjects // 2, n_subjects})
    rows = []
    for name in strategies:
        warm = new_target(name, root, bucket)  # first writes pay imports and codec set-up
        warm.init()
        warm.write("warm-up", payload("warm-up"))
        warm.cleanup()
        strat = new_target(name, root, bucket)
        strat.init()
        times = []
        for s in subjects:
            start = time.perf_counter()
            strat.write(s, payload(s))
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        tree = strat.open_tree()
        open_s = time.perf_counter() - start
        assert len(tree.children) == n_subjects
        # median of the 3 subjects up to each mark, to damp the shared machine's noise
        rows.append(
            [
                name,
                *(f"{statistics.median(times[max(0, k - 3) : k]) * 1e3:.0f}" for k in marks),
                f"{sum(times):.1f}",
                f"{open_s * 1e3:.0f}",
            ]
        )
        strat.cleanup()
    print(f"## Write time as the store grows to {n_subjects} subjects (ms per subject)\n")
    table(
        ["store", *(f"subject {k}" for k in marks), "total s", "open_datatree ms"],
        rows,
    )


def section_tags(root, n_subjects, rounds) -> None:
    import icechunk as ic

    ic.set_logs_filter("error")
    subjects = subjects_list(n_subjects)
    payloads = {s: payload(s) for s in subjects}
    with_tag, tag_only, read_tag = [], [], []
    for _ in range(rounds):
        strat = new_target("icechunk", root, None)
        strat.init()
        for s in subjects:
            start = time.perf_counter()
            strat.write(s, payloads[s], tag=True)
            with_tag.append(time.perf_counter() - start)
        snap = strat.repo().lookup_tag(subjects[0])
        start = time.perf_counter()
        strat.repo().create_tag("extra", snap)
        tag_only.append(time.perf_counter() - start)
        mid = subjects[n_subjects // 2]
        start = time.perf_counter()
        tree = strat.open_tree(tag=mid)
        read_tag.append(time.perf_counter() - start)
        assert sorted(tree.children) == subjects[: n_subjects // 2 + 1]
        n_commits = len(list(strat.repo().ancestry(branch="main")))
        strat.cleanup()
    med = statistics.median
    print("## Icechunk snapshots and tags\n")
    table(
        ["what", "ms (median)"],
        [
            ["write + commit + create_tag per subject", f"{med(with_tag) * 1e3:.0f}"],
            ["create_tag alone", f"{med(tag_only) * 1e3:.1f}"],
            [
                f"open_datatree at tag {mid!r} (sees subjects 1..{mid})",
                f"{med(read_tag) * 1e3:.0f}",
            ],
            [f"commits in main's ancestry after {n_subjects} subjects", n_commits],
        ],
    )


def section_kill(strategies, root, bucket, trials, n_subjects, scenario) -> None:
    subjects = subjects_list(n_subjects)
    version = 1 if scenario == "overwrite" else 0
    rows = []
    for name in strategies:
        # calibrate: how long a whole child run takes
        strat = new_target(name, root, bucket)
        strat.init()
        if scenario == "overwrite":
            for s in subjects:
                strat.write(s, payload(s, 0))
        proc = spawn(name, strat.target, subjects, version=version)
        total = finish(proc)["t"]
        strat.cleanup()
        counts = dict(
            readable=0, only_whole=0, mixed=0, rerun_ok=0, garbage=[], visible=[], any=[]
        )
        rng = random.Random(0)
        for _ in range(trials):
            strat = new_target(name, root, bucket)
            strat.init()
            if scenario == "overwrite":
                for s in subjects:
                    strat.write(s, payload(s, 0))
            proc = spawn(name, strat.target, subjects, version=version)
            time.sleep(rng.uniform(0, total * 1.1))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.log.unlink(missing_ok=True)
            check = type(strat)(strat.target)  # a fresh reader
            try:
                seen = visible(check)
                counts["readable"] += 1
            except Exception:
                seen = None
            if seen is not None:
                counts["visible"].append(sum(v == version for v in seen.values()))
                counts["any"].append(sum(v is not None for v in seen.values()))
                if all(v is not None for v in seen.values()):
                    counts["only_whole"] += 1
                else:
                    counts["mixed"] += 1
            counts["garbage"].append(check.garbage_bytes())
            # rerun: write (again) every subject not visible in its final version
            try:
                rerun = type(strat)(strat.target)
                for s in subjects:
                    if seen is None or seen.get(s) != version:
                        rerun.write(s, payload(s, version))
                final = visible(type(strat)(strat.target))
                if final == dict.fromkeys(subjects, version):
                    counts["rerun_ok"] += 1
            except Exception as e:
                print(f"  rerun failed ({name}): {type(e).__name__}: {e}", file=sys.stderr)
            strat.cleanup()
        rows.append(
            [
                name,
                trials,
                f"{total:.2f}",
                counts["readable"],
                counts["only_whole"],
                counts["mixed"],
                counts["rerun_ok"],
                f"{statistics.mean(counts['visible']):.1f}" if counts["visible"] else "-",
                f"{statistics.mean(counts['any']):.1f}" if counts["any"] else "-",
                f"{max(counts['garbage']) / 2**20:.1f}",
            ]
        )
    what = "replacing complete subjects" if scenario == "overwrite" else "writing new subjects"
    print(f"## SIGKILL at a random moment while {what} ({n_subjects} per run)\n")
    table(
        [
            "store",
            "trials",
            "run s",
            "readable after kill",
            "only whole subjects visible",
            "corrupt/mixed subject visible",
            "rerun completes all",
            "mean subjects visible: new version",
            "any version",
            "max leftover temp MB outside store",
        ],
        rows,
    )


def drive(procs, strat: Strategy) -> list[list[str]]:
    """Read the children's reports as they come; publish each finished subject (driver)."""
    import queue
    import threading

    events: queue.Queue = queue.Queue()
    outputs: list[list[str]] = [[] for _ in procs]

    def read(i, proc):
        for line in proc.stdout:
            outputs[i].append(line.strip())
            events.put(line)
        events.put(None)

    threads = [threading.Thread(target=read, args=(i, p)) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    open_children = len(procs)
    while open_children:
        line = events.get()
        if line is None:
            open_children -= 1
        elif line.startswith('{"done"'):
            strat.publish(json.loads(line)["done"])
    for t in threads:
        t.join()
    return outputs


def section_concurrent(strategies, root, bucket, rounds, writers, per_writer) -> None:
    rows, messages = [], {}
    for name in strategies:
        lost, corrupt, unreadable, failed, conflicts, walls = 0, 0, 0, 0, [], []
        for _ in range(rounds):
            strat = new_target(name, root, bucket)
            strat.init()
            go = str(root / f"go-{uuid.uuid4().hex[:8]}")
            groups = [[f"w{w}-sub-{i:02d}" for i in range(per_writer)] for w in range(writers)]
            by_driver = getattr(strat, "driver_publishes", False)
            procs = [spawn(name, strat.target, g, go=go, no_publish=by_driver) for g in groups]
            start = time.perf_counter()
            Path(go).touch()
            outputs = drive(procs, strat) if by_driver else [None] * len(procs)
            n_conf = 0
            for p, lines in zip(procs, outputs, strict=True):
                last = finish(p, lines)
                if last is None:
                    failed += 1
                    continue
                n_conf += last["info"].get("conflicts", 0)
                for m in last["info"].get("conflict_messages", []):
                    messages.setdefault(name, m)
            walls.append(time.perf_counter() - start)
            conflicts.append(n_conf)
            try:
                seen = visible(type(strat)(strat.target))
            except Exception as e:
                unreadable += 1
                print(f"  unreadable ({name}): {type(e).__name__}: {e}", file=sys.stderr)
                seen = {}
            expected = {s for g in groups for s in g}
            lost += len(expected - set(seen))
            corrupt += sum(v is None for v in seen.values())
            Path(go).unlink()
            strat.cleanup()
        rows.append(
            [
                name,
                rounds,
                writers * per_writer,
                f"{statistics.median(walls):.2f}",
                failed,
                unreadable,
                lost,
                corrupt,
                f"{sum(conflicts)} ({min(conflicts)}-{max(conflicts)})",
            ]
        )
    print(
        f"## {writers} processes writing {per_writer} subjects each into one store at once "
        f"({rounds} rounds)\n"
    )
    table(
        [
            "store",
            "rounds",
            "subjects per round",
            "wall s (median)",
            "writers failed",
            "unreadable stores",
            "subjects lost (total)",
            "corrupt subjects",
            "commit conflicts (total, min-max per round)",
        ],
        rows,
    )
    for name, m in messages.items():
        print(f"- first ConflictError ({name}): `{m}`")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--growth-subjects", type=int, default=40)
    parser.add_argument("--kill-trials", type=int, default=30)
    parser.add_argument("--kill-subjects", type=int, default=4)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--per-writer", type=int, default=3)
    parser.add_argument("--concurrent-rounds", type=int, default=5)
    parser.add_argument("--s3", action="store_true", help="also the *-s3 stores, on moto")
    parser.add_argument("--strategies", default="", help="comma-separated subset")
    parser.add_argument(
        "--sections", default="plain-open,write,tags,kill,kill-overwrite,concurrent"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--child-subjects", help=argparse.SUPPRESS)
    parser.add_argument("--child-version", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-go", help=argparse.SUPPRESS)
    parser.add_argument("--child-no-publish", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import icechunk as ic

    ic.set_logs_filter("error")
    strategies = list(LOCAL) + (list(S3) if args.s3 else [])
    if args.strategies:
        chosen = args.strategies.split(",")
        strategies = [s for s in (*LOCAL, *EXTRA, *S3) if s in chosen]
    sections = args.sections.split(",")
    versions = {m: __import__(m).__version__ for m in ("zarr", "xarray", "icechunk", "obstore")}
    print(f"versions: {versions}; {os.cpu_count()} CPUs\n")
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="study-bench-")))
        bucket = None
        if args.s3:
            sys.path.insert(0, str(TESTS))
            from helpers.s3 import moto_s3

            bucket = stack.enter_context(moto_s3()).new_bucket("study")
        if "plain-open" in sections:
            section_plain_open(strategies, root, bucket)
        if "write" in sections:
            section_write_read(strategies, root, bucket, args.rounds, args.subjects)
        if "growth" in sections:
            section_growth(strategies, root, bucket, args.growth_subjects)
        if "tags" in sections:
            section_tags(root, args.subjects, args.rounds)
        if "kill" in sections:
            section_kill(strategies, root, bucket, args.kill_trials, args.kill_subjects, "new")
        if "kill-overwrite" in sections:
            section_kill(
                strategies, root, bucket, args.kill_trials, args.kill_subjects, "overwrite"
            )
        if "concurrent" in sections:
            section_concurrent(
                strategies, root, bucket, args.concurrent_rounds, args.writers, args.per_writer
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
