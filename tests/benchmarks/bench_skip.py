"""A scheduled run on a quiet day: `skip: no new data` against a full run on the same store, side
by side (both through `ctp run`'s kfp.local path, 2 torchrun processes, default settings). Goal:
the skip costs <= 10% of a full run."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import LocalStore
from pipelines.local_run import LocalRunOptions, run_locally

GOAL = 0.10


def timed_run(store: LocalStore, root: Path, run_id: str) -> tuple[float, str]:
    options = LocalRunOptions(store_uri=store.uri, pipeline_root=str(root / "runs"))
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary = run_locally(options, run_id=run_id)
    return time.perf_counter() - started, summary


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = LocalStore(root / "store")
        seed_digits(store, SeedConfig())
        full, _ = timed_run(store, root, "bench-full")
        skip, summary = timed_run(store, root, "bench-quiet")
    assert "skip: no new data" in summary, summary
    ratio = skip / full
    print(
        f"full run {full:.1f} s, skip: no new data {skip:.1f} s: ratio {ratio:.3f} (goal <= {GOAL}) "
        f"{'met' if ratio <= GOAL else 'NOT met'}"
    )
