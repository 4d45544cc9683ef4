"""Inference-log compaction: rate, and peak memory at 1x and 10x the log (goal: peak RSS at 10x
within 1.2x of 1x, i.e. memory bounded by the chunk, not the log).

The raw log is KServe's format (tests/kserve_log.py), one object per event (KServe's default
``batchSize: 1``), in moto's S3 server over HTTP. Each compaction runs in its own process
(`ctp log compact` through pipelines.inference_log.compact) that reports its own peak RSS
(VmHWM of /proc/self/status), so the server and the writer are not counted. Not getrusage's
ru_maxrss: Linux carries the parent's high-water mark across fork and exec into the child's
ru_maxrss, and the parent here holds the whole log (moto keeps objects in memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SMALL, LARGE = int(os.environ.get("CTP_BENCH_LOG_SMALL", 5_000)), int(os.environ.get("CTP_BENCH_LOG_LARGE", 50_000))

CHILD = """
import json, sys
from components._shared.store import open_store
from pipelines.inference_log import CompactConfig, compact
report = compact(open_store(sys.argv[1]), CompactConfig(min_age_seconds=0))
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"rss_mb": int(hwm.split()[1]) / 1024, "seconds": report.seconds,
                  "rows": report.traffic_rows, "predictions": report.prediction_rows, "objects": report.objects}))
"""


def _fill(store, n: int) -> None:
    from components._shared.sampledata import load_digits_uint8
    from tests.kserve_log import logged_inference

    images = load_digits_uint8()[0]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, 10)).astype(np.float32)

    def put(i: int) -> None:
        for key, data in logged_inference(
            f"{uuid.UUID(int=i + (n << 64))}", images[i % len(images)], logits[i]
        ).items():
            store.put_bytes(key, data)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))


def measure(settings, n: int) -> dict:
    from components._shared.store import S3Store

    store = S3Store("ctp-bench", f"log-{uuid.uuid4().hex[:8]}", settings)
    started = time.perf_counter()
    _fill(store, n)
    fill_s = time.perf_counter() - started
    env = {
        **os.environ,
        "MINIO_ENDPOINT": settings.endpoint,
        "MINIO_ACCESS_KEY": settings.access_key,
        "MINIO_SECRET_KEY": settings.secret_key,
        "MINIO_SECURE": "false",
    }
    out = subprocess.run([sys.executable, "-c", CHILD, store.uri], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == result["predictions"] == n, result
    return {**result, "n": n, "fill_s": fill_s}


def run() -> None:
    from moto.server import ThreadedMotoServer

    from components._shared.store import S3Settings

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = S3Settings(endpoint=f"{host}:{port}", access_key="bench", secret_key="bench", secure=False)
    try:
        rows = [measure(settings, SMALL), measure(settings, LARGE)]
    finally:
        server.stop()
    print(f"{'inferences':>11} {'objects':>8} {'compact s':>10} {'rows/s':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(
            f"{r['n']:>11} {r['objects']:>8} {r['seconds']:>10.1f} {r['n'] / r['seconds']:>8.0f} {r['rss_mb']:>12.1f}"
        )
    ratio = rows[1]["rss_mb"] / rows[0]["rss_mb"]
    print(
        f"peak RSS at {LARGE // SMALL}x the log / 1x: {ratio:.2f} (goal <= 1.2) {'met' if ratio <= 1.2 else 'NOT met'}"
    )


if __name__ == "__main__":
    run()
