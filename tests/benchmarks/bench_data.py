"""Data benchmarks, measured side by side in one run:

- ingest throughput through the project vs the plain-pyarrow yardstick (goal >= 90%): the least
  any ingest that keeps ingest's promises does, read every source object, write its rows as the
  snapshot, sha256 the bytes written (``plain_ingest``: the snapshot's columns, types, writer
  settings and row groups, through the same store, so a local store fsyncs before it renames).
  On a local directory (the ETag cache warm, as every run after the first sees the batches it
  re-fingerprints; and cold, where the fingerprint hashes every input first) at 1x and 10x, and on
  S3 (MinIO when MINIO_ENDPOINT is set, else moto's S3 server: those rows are moto-bound). The
  raw read alone (the yardstick before 2026-12-02's issue 17) is printed for the history;
- peak memory (ru_maxrss of a fresh process) of ingest at 1x and 10x the data (goal: within 1.2x);
- KS drift on 2000 x 64 (goal <= 0.1 s) and the MMD/KS cost ratio (goal <= 25x).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHAPE = (24, 24, 3)  # 1.7 KB per image
ROWS_PER_BATCH = 2000
BATCHES_1X = 4
PLAIN_KEY = "bench-plain/snapshot.parquet"
GOAL = 0.90


def write_dataset(store, batches: int) -> None:
    from components._shared.dataset import ID, LABEL, images_to_array
    from components._shared.store import parquet_bytes

    rng = np.random.default_rng(0)
    for batch in range(batches):
        images = rng.integers(0, 255, (ROWS_PER_BATCH, *SHAPE), dtype=np.uint8)
        image_array, field = images_to_array(images)
        ids = pa.array([f"b{batch}-{i}" for i in range(ROWS_PER_BATCH)])
        labels = pa.array(rng.integers(0, 10, ROWS_PER_BATCH), pa.int64())
        table = pa.Table.from_arrays(
            [ids, image_array, labels],
            schema=pa.schema([pa.field(ID, pa.string()), field, pa.field(LABEL, pa.int64())]),
        )
        store.put_bytes(f"datasets/bench/batch={batch:04d}/part-0.parquet", parquet_bytes(table))


class _HashingSink:
    """A file object for pyarrow that hashes the bytes it passes on to the store's stream."""

    closed = False

    def __init__(self, stream):
        self.stream, self.digest = stream, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


def _as_snapshot_rows(record_batch: pa.RecordBatch, batch: str) -> pa.RecordBatch:
    """A source record batch with the snapshot's columns and types: the pixels as one fixed-size
    binary value per image (zero-copy from the uint8 list), the source batch name added."""
    from components._shared.dataset import BATCH, ID, IMAGE, LABEL, field_shape, pixels_to_array

    shape = field_shape(record_batch.schema.field(IMAGE))
    pixels = record_batch.column(IMAGE).flatten().to_numpy().reshape(-1, *shape)
    image_array, field = pixels_to_array(pixels)
    n = record_batch.num_rows
    return pa.RecordBatch.from_arrays(
        [record_batch.column(ID), pa.repeat(batch, n), image_array, record_batch.column(LABEL)],
        schema=pa.schema([pa.field(ID, pa.string()), pa.field(BATCH, pa.string()), field, pa.field(LABEL, pa.int64())]),
    )


def plain_ingest(store, objects: list[tuple[str, str]], key: str = PLAIN_KEY) -> tuple[str, int]:
    """The yardstick in plain pyarrow: read each (batch, key) object, write its rows as one
    snapshot file (row groups of ingest's READ_ROWS, the snapshot's writer settings), hash the
    bytes as they are written. Returns (sha256, bytes written)."""
    from components._shared.snapshot import writer_options
    from components.ingest.core import READ_ROWS

    filesystem = store.arrow_filesystem()
    stream = filesystem.open_output_stream(key)
    sink, writer = _HashingSink(stream), None
    for batch, source_key in objects:
        with filesystem.open_input_file(source_key) as handle:
            table = pq.read_table(handle)
        for record_batch in table.to_batches(max_chunksize=READ_ROWS):
            rows = _as_snapshot_rows(record_batch, batch)
            if writer is None:
                writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), rows.schema, **writer_options(rows.schema))
            writer.write_batch(rows)
    writer.close()
    size = stream.tell()
    stream.close()
    return sink.digest.hexdigest(), size


def _fresh(store) -> None:
    for key in store.list("snapshots/"):
        store.delete(key)
    store.delete(PLAIN_KEY)


def throughput(store, batches: int, repeats: int = 5, cold: bool = False) -> dict:
    """Rows per second (best of ``repeats``, the three interleaved): the project's ingest, the
    plain yardstick, and the raw read alone; the CPU seconds (all threads) of ingest and of the
    yardstick, which a loaded machine moves less than wall time; and the bytes each wrote.
    ``cold``: the local store's ETag cache is emptied before each ingest, so the fingerprint
    hashes every object again."""
    from components._shared.dataset import list_batches
    from components.ingest.config import IngestConfig
    from components.ingest.core import ingest

    objects = [(batch, key) for batch, keys in list_batches(store, "bench").items() for key in keys]
    filesystem = store.arrow_filesystem()
    times: dict[str, list[float]] = {"ingest": [], "plain": [], "read": []}
    cpu: dict[str, list[float]] = {"ingest": [], "plain": []}
    sizes = {}
    for _ in range(repeats):
        _fresh(store)
        started, cpu_started = time.perf_counter(), time.process_time()
        _, sizes["plain"] = plain_ingest(store, objects)
        times["plain"].append(time.perf_counter() - started)
        cpu["plain"].append(time.process_time() - cpu_started)
        if cold:
            shutil.rmtree(Path(store.root) / ".etags", ignore_errors=True)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = ingest(store, IngestConfig(dataset="bench"))
        times["ingest"].append(time.perf_counter() - started)
        cpu["ingest"].append(time.process_time() - cpu_started)
        started = time.perf_counter()
        for _, key in objects:
            with filesystem.open_input_file(key) as handle:
                pq.read_table(handle)
        times["read"].append(time.perf_counter() - started)
    prefix = result.snapshot
    sizes["ingest"] = sum(len(store.get_bytes(prefix + f"{s}.parquet")) for s in ("train", "test"))
    rows = batches * ROWS_PER_BATCH
    return {name: rows / min(seconds) for name, seconds in times.items()} | {
        "cpu": {name: min(seconds) for name, seconds in cpu.items()},
        "bytes": sizes,
    }


@contextlib.contextmanager
def s3_store():
    """MinIO when MINIO_ENDPOINT is set, else moto's S3 server in a process of its own (in this
    process it would compete for the GIL with what is measured)."""
    from components._shared.store import S3Settings, S3Store

    if os.environ.get("MINIO_ENDPOINT"):
        yield S3Store("ctp-bench", f"bench-{uuid.uuid4().hex[:8]}", S3Settings.from_env(os.environ)), "MinIO"
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        settings = S3Settings(endpoint=f"127.0.0.1:{port}", access_key="bench", secret_key="bench-secret", secure=False)
        yield S3Store("ctp-bench", "bench", settings), "moto S3 server (own process)"
    finally:
        server.terminate()
        server.wait()


def _wait_for_port(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the S3 server did not listen on port {port} within {seconds:.0f} s")


def peak_rss_mb(root: Path) -> float:
    """Ingest in a fresh process; its peak resident set size (ru_maxrss, KiB on Linux)."""
    code = (
        "import resource, sys; from components._shared.store import LocalStore; "
        "from components.ingest.core import IngestConfig, ingest; "
        "ingest(LocalStore(sys.argv[1]), IngestConfig(dataset='bench')); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def drift_costs() -> tuple[float, float]:
    """Median seconds of KS and MMD on 2000 x 64 (imports and warm-up excluded)."""
    from components.validate_data import drift

    rng = np.random.default_rng(0)
    reference, window = rng.random((2000, 64), np.float32), rng.random((2000, 64), np.float32)
    drift.ks_drift(reference, window), drift.mmd_drift(reference, window)  # warm-up: imports, torch init

    def median_seconds(fn, repeats):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return (
        median_seconds(lambda: drift.ks_drift(reference, window), 5),
        median_seconds(lambda: drift.mmd_drift(reference, window), 3),
    )


def _throughput_row(label: str, measured: dict, goal: str = f">= {GOAL:.0%}") -> tuple:
    ratio = measured["ingest"] / measured["plain"]
    return (
        label,
        f"{measured['ingest']:,.0f}",
        f"{measured['plain']:,.0f}",
        f"{ratio:.0%}",
        goal,
        f"{measured['cpu']['plain'] / measured['cpu']['ingest']:.0%}",
        f"{measured['read']:,.0f} ({measured['ingest'] / measured['read']:.0%})",
    )


def run() -> dict:
    from components._shared.store import LocalStore

    measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        one, ten = Path(tmp) / "x1", Path(tmp) / "x10"
        write_dataset(LocalStore(one), BATCHES_1X)
        write_dataset(LocalStore(ten), BATCHES_1X * 10)
        measured["local 1x"] = throughput(LocalStore(one), BATCHES_1X)
        measured["local 1x cold"] = throughput(LocalStore(one), BATCHES_1X, cold=True)
        measured["local 10x"] = throughput(LocalStore(ten), BATCHES_1X * 10)
        measured["local 10x cold"] = throughput(LocalStore(ten), BATCHES_1X * 10, cold=True)
        rss_one, rss_ten = peak_rss_mb(one), peak_rss_mb(ten)
    with s3_store() as (store, s3_name):
        write_dataset(store, BATCHES_1X)
        measured["s3 1x"] = throughput(store, BATCHES_1X)
    with s3_store() as (store, _):  # a fresh server: moto keeps every object in its memory
        write_dataset(store, BATCHES_1X * 10)
        measured["s3 10x"] = throughput(store, BATCHES_1X * 10, repeats=2)
    ks_s, mmd_s = drift_costs()
    mb_1x = BATCHES_1X * ROWS_PER_BATCH * int(np.prod(SHAPE)) / 1e6
    s3_goal = f">= {GOAL:.0%}" if s3_name == "MinIO" else "moto-bound"
    rows = [
        _throughput_row("ingest, local dir, 1x (rows/s)", measured["local 1x"]),
        _throughput_row("  the same, first sight (inputs hashed)", measured["local 1x cold"], "-"),
        _throughput_row("ingest, local dir, 10x (rows/s)", measured["local 10x"]),
        _throughput_row("  the same, first sight (inputs hashed)", measured["local 10x cold"], "-"),
        _throughput_row(f"ingest, {s3_name}, 1x (rows/s)", measured["s3 1x"], s3_goal),
        _throughput_row(f"ingest, {s3_name}, 10x (rows/s)", measured["s3 10x"], s3_goal),
        (
            f"ingest peak RSS 1x ({mb_1x:.0f} MB) / 10x",
            f"{rss_one:.0f} MB",
            f"{rss_ten:.0f} MB",
            f"{rss_ten / rss_one:.2f}x",
            "<= 1.2x",
            "",
            "",
        ),
        ("KS drift 2000x64 (s)", f"{ks_s:.3f}", "-", "-", "<= 0.1 s", "", ""),
        (
            "MMD drift (200/side subsample) vs KS (s)",
            f"{mmd_s:.3f}",
            f"KS {ks_s:.3f}",
            f"{mmd_s / ks_s:.1f}x",
            "<= 25x",
            "",
            "",
        ),
    ]
    header = ("measure", "project", "plain read+write+hash", "ratio", "goal", "CPU ratio", "raw read (ingest vs it)")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    local = measured["local 1x"]["bytes"]
    print(f"snapshot bytes at 1x: ingest {local['ingest']:,} (train + test) vs plain {local['plain']:,}")
    return {
        "throughput_ratio": measured["local 1x"]["ingest"] / measured["local 1x"]["plain"],
        "throughput_10x_ratio": measured["local 10x"]["ingest"] / measured["local 10x"]["plain"],
        "s3_throughput_ratio": measured["s3 1x"]["ingest"] / measured["s3 1x"]["plain"],
        "s3_10x_throughput_ratio": measured["s3 10x"]["ingest"] / measured["s3 10x"]["plain"],
        "rss_ratio": rss_ten / rss_one,
        "ks_s": ks_s,
        "mmd_ks_ratio": mmd_s / ks_s,
    }


if __name__ == "__main__":
    run()
