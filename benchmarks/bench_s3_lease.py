"""What the ``s3://`` lease costs an upload: publishing a subject's output folder with and
without :class:`roidask.io.locations.RemoteLease`.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_s3_lease.py [--rounds 7]

Data: a ``roidask run`` output folder of the bundled Haxby slice (written once into a
temporary folder: maps, tables, ``results.zarr``, ~40 files), published by
:func:`roidask.io.locations.publish_folder` to a local moto S3 server on 127.0.0.1
(``tests/helpers/s3.py``). Each round publishes it to a new prefix twice, in
alternating order: as roidask does (the lease: a conditional PUT, a HEAD and a DELETE
around the upload), and with the lease replaced by a no-op. moto is a Python server
on the same 2 cores: the absolute times are moto's; the difference and the per-round
ratio are what this measures. Prints medians and each round's ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers.s3 import moto_s3  # noqa: E402

from roidask.datasets import haxby_slice  # noqa: E402
from roidask.io import locations  # noqa: E402
from roidask.pipeline import PipelineParams  # noqa: E402
from roidask.runner import run_subject  # noqa: E402


class _NoLease:
    """The lease replaced by nothing (the upload as it was before the lease)."""

    def __init__(self, *args, **kwargs):
        pass

    def check(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _publish(folder: Path, bucket: str, *, lease: bool) -> float:
    dest = locations.S3Path.from_url(f"{bucket}/out-{uuid.uuid4().hex[:8]}")
    patch = contextlib.nullcontext() if lease else _patched(locations, "RemoteLease", _NoLease)
    with patch:
        start = time.perf_counter()
        locations.publish_folder(folder, dest)
        return time.perf_counter() - start


@contextlib.contextmanager
def _patched(module, name, value):
    real = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    haxby = haxby_slice()
    with tempfile.TemporaryDirectory() as tmp, moto_s3() as s3:
        folder = Path(tmp) / "sub-01"
        run_subject(bold=[haxby.bold], labels=[haxby.labels], store=None, subject=None,
                    mask=haxby.mask, out=folder, params=PipelineParams(), plots=False)  # fmt: skip
        files = [p for p in folder.rglob("*") if p.is_file()]
        size_kib = sum(p.stat().st_size for p in files) / 1024
        bucket = s3.new_bucket("lease")
        _publish(folder, bucket, lease=True)  # warm the client and the server
        rows = []
        for i in range(args.rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            times = {lease: _publish(folder, bucket, lease=lease) for lease in order}
            rows.append((times[False], times[True]))
    print(f"publish_folder of a run's output ({len(files)} files, {size_kib:.0f} KiB) to moto")
    header = ("round", "no lease (s)", "lease (s)", "ratio", "extra (ms)")
    print("{:>5}  {:>12}  {:>9}  {:>5}  {:>10}".format(*header))
    for i, (plain, leased) in enumerate(rows, 1):
        extra = (leased - plain) * 1e3
        print(f"{i:>5}  {plain:>12.3f}  {leased:>9.3f}  {leased / plain:>5.2f}  {extra:>10.1f}")
    plain_m = statistics.median(r[0] for r in rows)
    leased_m = statistics.median(r[1] for r in rows)
    ratios = [r[1] / r[0] for r in rows]
    print(f"median  {plain_m:>12.3f}  {leased_m:>9.3f}  {statistics.median(ratios):>5.2f}  "
          f"{(leased_m - plain_m) * 1e3:>10.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
