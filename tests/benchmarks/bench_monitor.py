"""The drift monitor's check (report only, local store): seconds per check by traffic window size,
and which rotation strengths it flags at the default window, measured in one run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from components._shared.dataset import decode_images, list_batches
from components._shared.model.inputs import pixel_features
from components._shared.registry import Registry, new_version_id
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import LocalStore, read_parquet
from pipelines.monitor import MonitorConfig, monitor

CRONJOB_PERIOD_S = 30 * 60


def _store_with_champion(root: Path, shift: str, strength: float) -> LocalStore:
    store = LocalStore(root)
    seed_digits(store, SeedConfig(batches=2))
    images = np.concatenate(
        [decode_images(read_parquet(store, k)) for ks in list_batches(store, "digits").values() for k in ks]
    )
    np.save(root / "ref.npy", pixel_features(images), allow_pickle=False)
    registry, version = Registry(store, "digits"), new_version_id()
    registry.publish(version, {"reference.npy": root / "ref.npy"}, {"data": {}})
    registry.promote(version, None, run_id="bench", reason="bench")
    seed_digits(store, SeedConfig(append=True, batches=2, shift=shift, strength=strength, seed=4))
    return store


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = _store_with_champion(Path(tmp) / "timing", "rotation", 0.5)
        monitor(store, MonitorConfig(), None)  # warm-up: imports alibi-detect and torch once
        print(f"{'window rows':>12} {'s/check':>8} {'share of 30-min period':>24}")
        for rows in (100, 500, 2000):
            started = time.perf_counter()
            monitor(store, MonitorConfig(window_rows=rows), None)
            seconds = time.perf_counter() - started
            print(f"{rows:>12} {seconds:>8.2f} {seconds / CRONJOB_PERIOD_S:>24.5f}")
        print(f"\n{'shift':>10} {'strength':>9} {'decision':>10} {'features drifted':>17} {'MMD says':>10}")
        for shift, strength in (
            ("none", 0.0),
            ("rotation", 0.25),
            ("rotation", 0.5),
            ("rotation", 1.0),
            ("noise", 0.5),
        ):
            store = _store_with_champion(Path(tmp) / f"{shift}-{strength}", shift, strength)
            outcome = monitor(store, MonitorConfig(), None)
            report = store.get_json(outcome.report_uri[len(store.uri) + 1 :])["drift"]
            ks = report["features"]
            print(
                f"{shift:>10} {strength:>9.2f} {report['decision']:>10} "
                f"{ks['features_drifted']:>8}/{ks['n_features']} {report['mmd']['decision']:>10}"
            )
