"""Ingested snapshots: ``snapshots/<fingerprint>/{train,test}.parquet`` + ``manifest.json``.

The manifest is written last and records the sha256 of every object; readers verify it, so a
flipped byte is an error rather than silently wrong values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components._shared.dataset import BATCH, ID, LABEL, decode_images
from components._shared.errors import IntegrityError
from components._shared.store import Store, sha256_bytes

SPLITS = ("train", "test")


def snapshot_prefix(fingerprint: str) -> str:
    return f"snapshots/{fingerprint}/"


@dataclasses.dataclass
class Split:
    """A decoded split held in memory: images (N, H, W, C) uint8, labels, ids, source batch."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    batches: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, mask: np.ndarray) -> "Split":
        keep = np.flatnonzero(mask)
        return Split(self.images[keep], self.labels[keep], [self.ids[i] for i in keep],
                     [self.batches[i] for i in keep])


class SplitWriter:
    """Streams one split to ``snapshots/<fingerprint>/<split>.parquet`` a row group at a time,
    hashing the bytes as they are written (no second read for the manifest's sha256)."""

    def __init__(self, store: Store, key: str, schema: pa.Schema):
        self.key, self.rows = key, 0
        self._digest = hashlib.sha256()
        self._stream = store.arrow_filesystem().open_output_stream(key)
        self._writer = pq.ParquetWriter(pa.PythonFile(self, mode="w"), schema)

    # the file-object protocol pyarrow's PythonFile calls
    closed = False

    def write(self, data) -> int:
        self._digest.update(data)
        return self._stream.write(data)

    def flush(self) -> None:
        self._stream.flush()

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> dict:
        """Finish the file; returns its manifest entry."""
        self._writer.close()
        self._stream.close()
        self.closed = True
        return {"sha256": self._digest.hexdigest(), "rows": self.rows}


def read_manifest(store: Store, fingerprint: str) -> dict:
    return store.get_json(snapshot_prefix(fingerprint) + "manifest.json")


def read_split_table(store: Store, fingerprint: str, split: str, manifest: dict | None = None) -> pa.Table:
    manifest = manifest or read_manifest(store, fingerprint)
    key = snapshot_prefix(fingerprint) + f"{split}.parquet"
    data = store.get_bytes(key)
    expected = manifest["objects"][f"{split}.parquet"]["sha256"]
    if sha256_bytes(data) != expected:
        raise IntegrityError(f"{store.describe(key)} does not match its manifest checksum",
                             hint="the snapshot is corrupt; delete snapshots/<fingerprint>/ and re-run ingest")
    return pq.read_table(io.BytesIO(data))


def load_split(store: Store, fingerprint: str, split: str, manifest: dict | None = None) -> Split:
    table = read_split_table(store, fingerprint, split, manifest)
    return Split(
        images=decode_images(table),
        labels=table.column(LABEL).to_numpy().astype(np.int64),
        ids=table.column(ID).to_pylist(),
        batches=table.column(BATCH).to_pylist(),
    )
