"""Data benchmarks, measured side by side in one run:

- ingest throughput through the project vs raw pyarrow reads of the same objects (goal >= 80%),
  on a local directory (with the ETag cache warm, as for the unchanged batches every run
  re-fingerprints, and cold) and on S3 (MinIO when MINIO_ENDPOINT is set, else moto's S3 server);
- peak memory (ru_maxrss of a fresh process) of ingest at 1x and 10x the data (goal: within 1.2x);
- KS drift on 2000 x 64 (goal <= 0.1 s) and the MMD/KS cost ratio (goal <= 25x).
"""

from __future__ import annotations

import contextlib
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


def _fresh(store) -> None:
    for key in store.list("snapshots/"):
        store.delete(key)


def throughput(store, batches: int, repeats: int = 3, cold: bool = False) -> tuple[float, float]:
    """Rows per second: the project's ingest, and pyarrow reading the same objects. ``cold``: the
    local store's ETag cache is emptied before each ingest, so every object is hashed again."""
    from components._shared.dataset import list_batches
    from components.ingest.config import IngestConfig
    from components.ingest.core import ingest

    keys = [k for ks in list_batches(store, "bench").values() for k in ks]
    filesystem = store.arrow_filesystem()
    rows = batches * ROWS_PER_BATCH
    raw, project = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for key in keys:
            with filesystem.open_input_file(key) as handle:
                pq.read_table(handle)
        raw.append(time.perf_counter() - started)
        _fresh(store)
        if cold:
            shutil.rmtree(Path(store.root) / ".etags", ignore_errors=True)
        started = time.perf_counter()
        ingest(store, IngestConfig(dataset="bench"))
        project.append(time.perf_counter() - started)
    return rows / min(project), rows / min(raw)


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


def run() -> dict:
    from components._shared.store import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        one, ten = Path(tmp) / "x1", Path(tmp) / "x10"
        write_dataset(LocalStore(one), BATCHES_1X)
        write_dataset(LocalStore(ten), BATCHES_1X * 10)
        project_rps, raw_rps = throughput(LocalStore(one), BATCHES_1X)
        cold_rps, cold_raw_rps = throughput(LocalStore(one), BATCHES_1X, cold=True)
        project_10x_rps, raw_10x_rps = throughput(LocalStore(ten), BATCHES_1X * 10)
        cold_10x_rps, cold_10x_raw_rps = throughput(LocalStore(ten), BATCHES_1X * 10, cold=True)
        rss_one, rss_ten = peak_rss_mb(one), peak_rss_mb(ten)
    with s3_store() as (store, s3_name):
        write_dataset(store, BATCHES_1X)
        s3_project_rps, s3_raw_rps = throughput(store, BATCHES_1X)
    with s3_store() as (store, _):  # a fresh server: moto keeps every object in its memory
        write_dataset(store, BATCHES_1X * 10)
        s3_10x_project_rps, s3_10x_raw_rps = throughput(store, BATCHES_1X * 10, repeats=2)
    ks_s, mmd_s = drift_costs()
    mb_1x = BATCHES_1X * ROWS_PER_BATCH * int(np.prod(SHAPE)) / 1e6
    rows = [
        (
            "ingest throughput, local dir, 1x (rows/s)",
            f"{project_rps:,.0f}",
            f"raw pyarrow {raw_rps:,.0f}",
            f"{project_rps / raw_rps:.0%}",
            ">= 80%",
        ),
        (
            "  the same, every object hashed (cold ETag cache)",
            f"{cold_rps:,.0f}",
            f"raw pyarrow {cold_raw_rps:,.0f}",
            f"{cold_rps / cold_raw_rps:.0%}",
            ">= 80%",
        ),
        (
            "ingest throughput, local dir, 10x (rows/s)",
            f"{project_10x_rps:,.0f}",
            f"raw pyarrow {raw_10x_rps:,.0f}",
            f"{project_10x_rps / raw_10x_rps:.0%}",
            ">= 80%",
        ),
        (
            "  the same, every object hashed (cold ETag cache)",
            f"{cold_10x_rps:,.0f}",
            f"raw pyarrow {cold_10x_raw_rps:,.0f}",
            f"{cold_10x_rps / cold_10x_raw_rps:.0%}",
            ">= 80%",
        ),
        (
            f"ingest throughput, {s3_name}, 1x (rows/s)",
            f"{s3_project_rps:,.0f}",
            f"raw pyarrow {s3_raw_rps:,.0f}",
            f"{s3_project_rps / s3_raw_rps:.0%}",
            ">= 80%",
        ),
        (
            f"ingest throughput, {s3_name}, 10x (rows/s)",
            f"{s3_10x_project_rps:,.0f}",
            f"raw pyarrow {s3_10x_raw_rps:,.0f}",
            f"{s3_10x_project_rps / s3_10x_raw_rps:.0%}",
            ">= 80%",
        ),
        (
            f"ingest peak RSS 1x ({mb_1x:.0f} MB) / 10x",
            f"{rss_one:.0f} MB",
            f"{rss_ten:.0f} MB",
            f"{rss_ten / rss_one:.2f}x",
            "<= 1.2x",
        ),
        ("KS drift 2000x64 (s)", f"{ks_s:.3f}", "-", "-", "<= 0.1 s"),
        (
            "MMD drift (200/side subsample) vs KS (s)",
            f"{mmd_s:.3f}",
            f"KS {ks_s:.3f}",
            f"{mmd_s / ks_s:.1f}x",
            "<= 25x",
        ),
    ]
    header = ("measure", "project", "compared with", "ratio", "goal")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(5)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    return {
        "throughput_ratio": project_rps / raw_rps,
        "throughput_10x_ratio": project_10x_rps / raw_10x_rps,
        "s3_throughput_ratio": s3_project_rps / s3_raw_rps,
        "s3_10x_throughput_ratio": s3_10x_project_rps / s3_10x_raw_rps,
        "rss_ratio": rss_ten / rss_one,
        "ks_s": ks_s,
        "mmd_ks_ratio": mmd_s / ks_s,
    }


if __name__ == "__main__":
    run()
