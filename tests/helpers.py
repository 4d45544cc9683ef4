"""Builders of small, real Parquet batches for tests (good and deliberately broken)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from components._shared.dataset import ID, LABEL, images_to_array
from components._shared.sampledata import load_digits_uint8
from components._shared.store import Store, parquet_bytes


def digits_table(n: int = 40, *, offset: int = 0, prefix: str = "x", shape=None, labels=None) -> pa.Table:
    images, y = load_digits_uint8()
    images, y = images[offset : offset + n], y[offset : offset + n]
    if shape is not None:
        images = np.zeros((n, *shape), np.uint8)
    image_array, field = images_to_array(images)
    y = y if labels is None else labels
    return pa.Table.from_arrays(
        [pa.array([f"{prefix}-{i}" for i in range(n)]), image_array, pa.array(y, pa.int64())],
        schema=pa.schema([pa.field(ID, pa.string()), field, pa.field(LABEL, pa.int64())]),
    )


def write_batch(store: Store, table: pa.Table, batch: str, dataset: str = "digits", kind: str = "datasets") -> str:
    key = f"{kind}/{dataset}/batch={batch}/part-0.parquet"
    store.put_bytes(key, parquet_bytes(table))
    return key


def train_in_process(store: Store, fingerprint: str, out_dir, **overrides) -> dict:
    """One-process training (the same code path torchrun runs on every rank)."""
    from components.train.config import TrainConfig
    from components.train.core import train

    config = TrainConfig(
        store_uri=store.uri,
        fingerprint=fingerprint,
        out_dir=str(out_dir),
        **{"epochs": 3, "checkpoint_every": 0, **overrides},
    )
    return train(config)


def ingest_inputs(store_uri: str, *, run_id: str = "", job_id: str = "") -> dict:
    """The ingest wrapper's parameter inputs as the pipeline passes them by default (IngestConfig's
    defaults; no lease wait), for calling `ingest.python_func` in tests."""
    from components.ingest.config import IngestConfig

    c = IngestConfig()
    return dict(
        store_uri=store_uri,
        dataset=c.dataset,
        model_name=c.model_name,
        test_fraction=c.test_fraction,
        replay_fraction=c.replay_fraction,
        data_fingerprint="",
        lease_policy=c.lease_policy,
        lease_ttl_seconds=c.lease_ttl_seconds,
        lease_wait_seconds=0,
        force=c.force,
        run_id=run_id,
        job_id=job_id,
    )
