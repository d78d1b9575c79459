"""What publishing an ``s3://`` output in an order that never shows a mix costs: requests
and wall time of :func:`roidask.io.locations.publish_folder` against the order it had before.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_s3_publish.py [--rounds 7] [--latency-ms 0]

Data: a ``roidask run`` output folder of the bundled Haxby slice (written once into a
temporary folder: maps, tables, figures, ``results.zarr``), published to a local moto S3
server on 127.0.0.1 (``tests/helpers/s3.py``), each round over an output already there
(``--overwrite``: the case the order is for) and to a new prefix, in alternating order:

* ``before``: the order roidask had (pending marker; every object put over the old ones;
  the old objects the new output lacks deleted; the marker), which a killed overwrite
  left as a mix of the two outputs;
* ``now``: :func:`~roidask.io.locations.publish_folder` (pending marker; the old output
  deleted; data objects; zarr metadata, deepest first, each store's root last; the marker).

Both hold the lease. Requests are counted by wrapping obstore's functions (one
``delete`` of a list is one request per 1000 keys). ``--latency-ms`` adds that many
milliseconds to every request (a sleep in the calling thread: as a remote endpoint's
round trip; moto on the same machine answers in about a millisecond), which is what the
extra rounds of puts cost. Prints medians and each round's ratio.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import obstore

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers.s3 import moto_s3  # noqa: E402

from roidask._atomic import MARKER  # noqa: E402
from roidask.datasets import haxby_slice  # noqa: E402
from roidask.io import locations  # noqa: E402
from roidask.pipeline import PipelineParams  # noqa: E402
from roidask.runner import run_subject  # noqa: E402

_CALLS = ("put", "delete", "get", "head", "list", "list_with_delimiter", "get_range")


def publish_before(local: Path, dest: locations.S3Path) -> None:
    """The order ``publish_folder`` had before (what a killed overwrite left mixed)."""
    names = locations.list_files(local)
    with locations.output_lock(dest, param="out", wait=True) as lease:
        old = locations.remote_marker(dest)
        old_files = set(old["files"]) if old else set()
        pending = {"written_by": "roidask", "kind": "subject-results", "complete": False,
                   "files": sorted((old_files | set(names)) - {MARKER})}  # fmt: skip
        (dest / MARKER).write_text(json.dumps(pending, indent=2) + "\n")
        locations.put_files(local, dest, [n for n in names if n != MARKER])
        stale = sorted(old_files - set(names) - {MARKER})
        if stale:
            locations.delete_prefix_keys(dest, stale)
        lease.check()
        locations.put_files(local, dest, [MARKER])


@contextlib.contextmanager
def counted(latency_s: float):
    """Count obstore's requests (and delay each by ``latency_s``) while in the block."""
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    real = {name: getattr(obstore, name) for name in _CALLS}

    def wrap(name):
        def call(*args, **kwargs):
            with lock:
                counts[name] += 1
            if latency_s:
                time.sleep(latency_s)
            return real[name](*args, **kwargs)

        return call

    for name in _CALLS:
        setattr(obstore, name, wrap(name))
    try:
        yield counts
    finally:
        for name, function in real.items():
            setattr(obstore, name, function)


def _publish(how: str, folder: Path, dest: locations.S3Path, latency_s: float):
    publish = locations.publish_folder if how == "now" else publish_before
    with counted(latency_s) as counts:
        start = time.perf_counter()
        publish(folder, dest)
        seconds = time.perf_counter() - start
    return seconds, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    latency_s = args.latency_ms / 1e3
    haxby = haxby_slice()
    with tempfile.TemporaryDirectory() as tmp, moto_s3() as s3:
        folder = Path(tmp) / "sub-01"
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=folder, params=PipelineParams(), plots=True)  # fmt: skip
        files = [p for p in folder.rglob("*") if p.is_file()]
        size_kib = sum(p.stat().st_size for p in files) / 1024
        bucket = s3.new_bucket("publish")
        warm = locations.S3Path.from_url(f"{bucket}/warm")
        _publish("now", folder, warm, 0.0)  # the client and the server warmed
        rows: dict[str, list] = {"overwrite": [], "new": []}
        requests: dict[tuple[str, str], collections.Counter] = {}
        for i in range(args.rounds):
            order = ("before", "now") if i % 2 == 0 else ("now", "before")
            for case in rows:
                times = {}
                for how in order:
                    dest = locations.S3Path.from_url(f"{bucket}/out-{uuid.uuid4().hex[:8]}")
                    if case == "overwrite":
                        locations.publish_folder(folder, dest)  # the output replaced
                    times[how], counts = _publish(how, folder, dest, latency_s)
                    requests[case, how] = counts
                rows[case].append((times["before"], times["now"]))
    print(f"publish_folder of a run's output ({len(files)} files, {size_kib:.0f} KiB) to moto, "
          f"{args.latency_ms:g} ms added per request")  # fmt: skip
    for case, found in rows.items():
        print(f"\n{case}: requests before {_shown(requests[case, 'before'])}")
        print(f"{' ' * len(case)}  requests now    {_shown(requests[case, 'now'])}")
        print("{:>6}  {:>9}  {:>9}  {:>5}  {:>10}".format(
            "round", "before s", "now s", "ratio", "extra ms"))  # fmt: skip
        for i, (before, now) in enumerate(found, 1):
            print(f"{i:>6}  {before:>9.3f}  {now:>9.3f}  {now / before:>5.2f}  "
                  f"{(now - before) * 1e3:>10.1f}")  # fmt: skip
        before_m = statistics.median(r[0] for r in found)
        now_m = statistics.median(r[1] for r in found)
        ratios = [r[1] / r[0] for r in found]
        print(f"median  {before_m:>9.3f}  {now_m:>9.3f}  {statistics.median(ratios):>5.2f}  "
              f"{(now_m - before_m) * 1e3:>10.1f}")  # fmt: skip


def _shown(counts: collections.Counter) -> str:
    return (
        f"{sum(counts.values())} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + ")"
    )


if __name__ == "__main__":
    main()
