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
        replay_ratio=c.replay_ratio,
        data_fingerprint="",
        lease_policy=c.lease_policy,
        lease_ttl_seconds=c.lease_ttl_seconds,
        lease_wait_seconds=0,
        force=c.force,
        run_id=run_id,
        job_id=job_id,
    )


def encode_images(images, fmt: str = "PNG", quality: int = 90) -> list[bytes]:
    """(N, H, W, C) uint8 -> PNG or JPEG bytes per image (as `ctp data import` stores them)."""
    import io

    from PIL import Image

    encoded = []
    for image in images:
        sink = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(sink, format=fmt, quality=quality)
        encoded.append(sink.getvalue())
    return encoded


def write_encoded_split(store: Store, fingerprint: str, encoded: list[bytes], labels, group_rows: int = 2048) -> None:
    """``snapshots/<fingerprint>/train.parquet`` holding images as encoded bytes, in row groups of
    ``group_rows``: the training split as the loader reads it (no manifest: the stream does not
    read one)."""
    from components._shared.dataset import BATCH, IMAGE
    from components._shared.snapshot import SplitWriter, split_key

    schema = pa.schema(
        [
            pa.field(ID, pa.string()),
            pa.field(BATCH, pa.string()),
            pa.field(IMAGE, pa.binary()),
            pa.field(LABEL, pa.int64()),
        ]
    )
    writer = SplitWriter(store, split_key(fingerprint, "train"), schema)
    for first in range(0, len(encoded), group_rows):
        rows = range(first, min(first + group_rows, len(encoded)))
        columns = [
            [f"img-{i}" for i in rows],
            ["0000"] * len(rows),
            encoded[rows.start : rows.stop],
            labels[rows.start : rows.stop],
        ]
        writer.write_table(pa.Table.from_arrays([pa.array(c, t.type) for c, t in zip(columns, schema)], schema=schema))
    writer.close()
