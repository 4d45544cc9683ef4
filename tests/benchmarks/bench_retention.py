"""Retention (`ctp store gc`): store size after 20 runs with gc vs without, and the time of a gc
over about 10,000 objects on the S3 test server (moto over HTTP on 127.0.0.1).

The history is the scripted one of tests/unit/test_retention.py (promoted, rejected, gate-failed,
failed, skipped runs, one still active), with object sizes of the digits demo as measured on a
real local run: a checkpoint step 1.6 MB (model + optimizer state), a version's files 2.2 MB, a
snapshot split 40 kB."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import uuid
from pathlib import Path

from components._shared import retention
from components._shared.store import LocalStore, S3Settings, S3Store
from tests.unit.test_retention import build_history

DEMO_SIZES = {"ckpt": 1_600_000, "model": 2_200_000, "snap": 40_000}
OBJECTS_GOAL = 10_000


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _store_size() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        build_history(store, dt.datetime.now(dt.UTC), sizes=DEMO_SIZES)
        without = _size(store.root)
        planned = retention.plan(store)
        swept = retention.sweep(store, planned)
        after = _size(store.root)
        print(f"{'':>26} {'MB':>8} {'objects':>8}")
        print(f"{'20 runs, no gc':>26} {without / 1e6:>8.1f} {len(planned.keys()) + len(store.list('')):>8}")
        print(f"{'20 runs, gc (defaults)':>26} {after / 1e6:>8.1f} {len(store.list('')):>8}")
        print(f"size with gc / without: {after / without:.3f} ({swept.objects_deleted} objects removed)")


def _gc_time() -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        settings = S3Settings(endpoint=f"{host}:{port}", access_key="bench", secret_key="bench", secure=False)
        store = S3Store("ctp-bench", f"gc-{uuid.uuid4().hex[:8]}", settings)
        started = time.perf_counter()
        build_history(store, dt.datetime.now(dt.UTC), checkpoint_steps=OBJECTS_GOAL // 40)
        total = len(store.list(""))
        print(f"\nS3 (moto) store of {total} objects written in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        planned = retention.plan(store)
        plan_s = time.perf_counter() - started
        swept = retention.sweep(store, planned)
        print(f"{'plan':>8} {plan_s:>7.3f} s  ({len(planned.groups)} groups, {len(planned.keys())} objects)")
        print(f"{'sweep':>8} {swept.seconds:>7.3f} s  ({swept.objects_deleted} objects deleted in batches of 1,000)")
        print(f"{'gc':>8} {plan_s + swept.seconds:>7.3f} s  over {total} objects")
        started = time.perf_counter()
        again = retention.plan(store)
        print(f"second gc: {len(again.groups)} groups, plan {time.perf_counter() - started:.2f} s")
    finally:
        server.stop()


def run() -> None:
    _store_size()
    _gc_time()
