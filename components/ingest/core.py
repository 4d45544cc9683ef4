"""Ingest: read every labelled batch of a dataset, split train/test by a stable hash of the
example id, and publish a snapshot whose manifest (written last) carries per-object sha256."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components._shared.dataset import (
    BATCH, ID, LABEL, Finding, check_batch_table, decode_images, images_to_array, is_test_example,
    list_batches,
)
from components._shared.errors import AlreadyExists, ConfigError, DataValidationError
from components._shared.snapshot import SPLITS, read_manifest, snapshot_prefix
from components._shared.store import Store, parquet_bytes, sha256_bytes

CONTRACT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    dataset: str = "digits"
    test_fraction: float = 0.2
    expected_fingerprint: str = ""  # computed before the run; "" = accept whatever is there

    def __post_init__(self):
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction {self.test_fraction} must be between 0 and 1")


@dataclasses.dataclass
class IngestResult:
    fingerprint: str
    snapshot: str
    batches: list[str]
    rows: dict[str, int]
    image_shape: list[int]
    classes: list[int]


def compute_fingerprint(store: Store, dataset: str, test_fraction: float) -> str:
    """A fingerprint of the data window from object ETags; cheap (no data is read on S3)."""
    batches = list_batches(store, dataset)
    if not batches:
        raise DataValidationError(
            f"no batches under {store.describe(f'datasets/{dataset}/')}",
            hint="seed sample data with `ctp data seed` or write datasets/<name>/batch=<id>/*.parquet",
            code="NO_DATA",
        )
    entries = [(key, store.etag(key)) for keys in batches.values() for key in keys]
    payload = json.dumps({"v": CONTRACT_VERSION, "test_fraction": test_fraction, "objects": entries})
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _read_batch(store: Store, batch: str, keys: list[str]) -> pa.Table:
    tables = []
    for key in keys:
        try:
            tables.append(pq.read_table(io.BytesIO(store.get_bytes(key))))
        except (pa.ArrowException, OSError) as err:
            raise DataValidationError(f"batch={batch}: {key} is not a readable Parquet file ({err})",
                                      hint="re-upload the batch or remove it", code="PARQUET_CORRUPT") from None
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as err:
        raise DataValidationError(f"batch={batch}: its files disagree on the schema ({err})",
                                  code="SCHEMA_MISMATCH") from None
    _raise_errors(check_batch_table(table, batch))
    return table


def _raise_errors(findings: list[Finding]) -> None:
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        first = errors[0]
        raise DataValidationError(f"batch={first.batch}: {first.message}", code=first.code,
                                  hint="fix or remove the batch, then re-run")


def _normalise(table: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images = decode_images(table)
    return images, table.column(LABEL).to_numpy().astype(np.int64), table.column(ID).to_pylist()


def _split_table(images: np.ndarray, labels: np.ndarray, ids: list[str], batches: list[str]) -> pa.Table:
    image_array, field = images_to_array(images)
    schema = pa.schema([pa.field(ID, pa.string()), pa.field(BATCH, pa.string()), field,
                        pa.field(LABEL, pa.int64())])
    return pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(batches, pa.string()), image_array,
                                 pa.array(labels, pa.int64())], schema=schema)


def ingest(store: Store, config: IngestConfig) -> IngestResult:
    fingerprint = compute_fingerprint(store, config.dataset, config.test_fraction)
    if config.expected_fingerprint and config.expected_fingerprint != fingerprint:
        raise DataValidationError(
            f"data changed since the run was submitted (fingerprint {fingerprint}, "
            f"expected {config.expected_fingerprint})",
            hint="submit a new run so its cache key matches the data", code="FINGERPRINT_MISMATCH")
    prefix = snapshot_prefix(fingerprint)
    if store.exists(prefix + "manifest.json"):
        return _result(read_manifest(store, fingerprint))

    source = list_batches(store, config.dataset)
    parts: list[tuple[np.ndarray, np.ndarray, list[str], str]] = []
    for batch, keys in source.items():
        parts.append((*_normalise(_read_batch(store, batch, keys)), batch))
    shapes = {p[0].shape[1:] for p in parts}
    if len(shapes) > 1:
        first, other = parts[0], next(p for p in parts if p[0].shape[1:] != parts[0][0].shape[1:])
        raise DataValidationError(f"batch={other[3]}: image shape {other[0].shape[1:]} differs from "
                                  f"batch={first[3]} {first[0].shape[1:]}", code="IMAGE_SHAPE",
                                  hint="resize the images of that batch or remove it")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    ids = [i for p in parts for i in p[2]]
    batches = [p[3] for p in parts for _ in p[2]]
    is_test = np.array([is_test_example(i, config.test_fraction) for i in ids], dtype=bool)

    objects, rows = {}, {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        keep = np.flatnonzero(mask)
        table = _split_table(images[keep], labels[keep], [ids[i] for i in keep], [batches[i] for i in keep])
        data = parquet_bytes(table)
        store.put_bytes(prefix + f"{split}.parquet", data)  # blobs first; the manifest makes them real
        objects[f"{split}.parquet"] = {"sha256": sha256_bytes(data), "rows": table.num_rows}
        rows[split] = table.num_rows
    manifest = {
        "dataset": config.dataset,
        "fingerprint": fingerprint,
        "test_fraction": config.test_fraction,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "batches": {b: [{"key": k, "etag": store.etag(k)} for k in keys] for b, keys in source.items()},
        "objects": objects,
        "image_shape": list(images.shape[1:]),
        "classes": sorted(set(labels.tolist())),
    }
    try:
        store.put_json(prefix + "manifest.json", manifest, create_only=True)
    except AlreadyExists:  # a concurrent run published the same snapshot first: use theirs
        manifest = read_manifest(store, fingerprint)
    return _result(manifest)


def _result(manifest: dict) -> IngestResult:
    return IngestResult(
        fingerprint=manifest["fingerprint"],
        snapshot=snapshot_prefix(manifest["fingerprint"]),
        batches=list(manifest["batches"]),
        rows={s: manifest["objects"][f"{s}.parquet"]["rows"] for s in SPLITS},
        image_shape=manifest["image_shape"],
        classes=manifest["classes"],
    )
