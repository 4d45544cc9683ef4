"""Ingested snapshots: ``snapshots/<fingerprint>/{train,test}.parquet`` + ``manifest.json``.

The manifest is written last and records the sha256 of every object; readers verify it, so a
flipped byte is an error rather than silently wrong values. Large splits are hashed in one
streaming pass (verify_split), then read a row group at a time (SplitFile): memory does not
grow with the split. load_split holds a whole split, for small ones (the test split).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components._shared.dataset import BATCH, ID, IMAGE, LABEL, decode_images
from components._shared.errors import IntegrityError
from components._shared.store import Store, sha256_bytes

SPLITS = ("train", "test")
RUN_RECORD = "run.json"  # runs/<run>/run.json: the run's model and snapshot fingerprint, written by ingest
TOMBSTONE = "gc-tombstone.json"  # snapshots/<fp>/gc-tombstone.json while `ctp store gc` deletes that snapshot
TOMBSTONE_STALE_SECONDS = 600  # a tombstone older than this was left by a gc that died


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

    def where(self, mask: np.ndarray) -> Split:
        keep = np.flatnonzero(mask)
        return Split(self.images[keep], self.labels[keep], [self.ids[i] for i in keep], [self.batches[i] for i in keep])


def writer_options(schema: pa.Schema) -> dict:
    """The snapshot's ParquetWriter settings (also the ingest benchmark's plain-pyarrow yardstick):
    dictionaries and statistics help the small columns; on the pixel column they cost time for nothing."""
    small = [name for name in schema.names if name != IMAGE]
    return {"use_dictionary": small, "write_statistics": small}


class SplitWriter:
    """Streams one split to ``snapshots/<fingerprint>/<split>.parquet`` a row group at a time,
    hashing the bytes as they are written (no second read for the manifest's sha256)."""

    def __init__(self, store: Store, key: str, schema: pa.Schema):
        self.key, self.rows = key, 0
        self._digest = hashlib.sha256()
        self._stream = store.arrow_filesystem().open_output_stream(key)
        self._writer = pq.ParquetWriter(pa.PythonFile(self, mode="w"), schema, **writer_options(schema))

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


def data_contract(manifest: dict) -> dict:
    """What a model trained on this snapshot relies on: image shape, label type, classes and, for
    string labels, which name each class index stands for. Stored in the model card; the next
    snapshot is checked against it (validate-data)."""
    return {
        "image_shape": manifest["image_shape"],
        "classes": manifest["classes"],
        "label_kind": manifest.get("label_kind"),
        "label_names": manifest.get("label_names"),
    }


def read_manifest(store: Store, fingerprint: str) -> dict:
    return store.get_json(snapshot_prefix(fingerprint) + "manifest.json")


def split_key(fingerprint: str, split: str) -> str:
    return snapshot_prefix(fingerprint) + f"{split}.parquet"


CORRUPT_HINT = "the snapshot is corrupt; delete snapshots/<fingerprint>/ and re-run ingest"


def _check_digest(store: Store, fingerprint: str, split: str, manifest: dict | None, actual: str) -> None:
    manifest = manifest or read_manifest(store, fingerprint)
    if actual != manifest["objects"][f"{split}.parquet"]["sha256"]:
        raise IntegrityError(
            f"{store.describe(split_key(fingerprint, split))} does not match its manifest checksum", hint=CORRUPT_HINT
        )


def load_split(store: Store, fingerprint: str, split: str, manifest: dict | None = None) -> Split:
    """The whole split in memory, for small splits (the test split); training streams (SplitFile)."""
    data = store.get_bytes(split_key(fingerprint, split))
    _check_digest(store, fingerprint, split, manifest, sha256_bytes(data))
    return split_from_table(pq.read_table(io.BytesIO(data)))


def split_from_table(table: pa.Table) -> Split:
    return Split(
        images=decode_images(table),
        labels=table.column(LABEL).to_numpy().astype(np.int64),
        ids=table.column(ID).to_pylist(),
        batches=table.column(BATCH).to_pylist(),
    )


HASH_CHUNK_BYTES = 4 << 20


def verify_split(store: Store, fingerprint: str, split: str, manifest: dict | None = None) -> None:
    """Check the split's sha256 against the manifest in one streaming pass: memory stays at one
    chunk whatever the object's size. Raises IntegrityError on a mismatch."""
    digest = hashlib.sha256()
    with store.arrow_filesystem().open_input_stream(split_key(fingerprint, split)) as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    _check_digest(store, fingerprint, split, manifest, digest.hexdigest())


RowFilter = Callable[[pa.Table], np.ndarray]  # a table -> a bool mask of the rows to keep


class SplitFile:
    """One split read a row group at a time (Parquet range reads, no download of the whole object).

    Row counts come from the footer. It does not verify the checksum: call verify_split once
    first (every reader of a split would otherwise hash the whole object again)."""

    def __init__(self, store: Store, fingerprint: str, split: str):
        self._handle = store.arrow_filesystem().open_input_file(split_key(fingerprint, split))
        self._file = pq.ParquetFile(self._handle)
        self.schema = self._file.schema_arrow
        metadata = self._file.metadata
        self.group_rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]

    def __enter__(self) -> SplitFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._handle.close()

    def read_group(self, group: int, columns: Sequence[str] | None = None) -> pa.Table:
        return self._file.read_row_group(group, columns=list(columns) if columns is not None else None)

    def count(self, keep: RowFilter, columns: Sequence[str]) -> list[int]:
        """Rows per row group that ``keep`` keeps, reading only ``columns`` (e.g. the ids)."""
        return [int(np.count_nonzero(keep(self.read_group(g, columns)))) for g in range(len(self.group_rows))]

    def sample(
        self,
        size: int,
        seed: int,
        *,
        keep: RowFilter | None = None,
        keep_columns: Sequence[str] = (),
        counts: Sequence[int] | None = None,
    ) -> Iterator[pa.Table]:
        """A seeded uniform sample of up to ``size`` of the rows ``keep`` keeps (all rows if None), in
        file order: one table per row group that holds a picked row, and only those groups are read.
        ``keep`` reads ``keep_columns``; ``counts`` are its kept rows per group, if already known."""
        if counts is None:
            counts = self.group_rows if keep is None else self.count(keep, keep_columns)
        starts = np.cumsum([0, *counts])
        picks = np.sort(np.random.default_rng(seed).choice(starts[-1], size=min(size, starts[-1]), replace=False))
        bounds = np.searchsorted(picks, starts)
        for group in range(len(counts)):
            local = picks[bounds[group] : bounds[group + 1]] - starts[group]
            if local.size:
                table = self.read_group(group)
                yield (table if keep is None else table.filter(pa.array(keep(table)))).take(pa.array(local))

    def sample_table(self, size: int, seed: int, **options) -> pa.Table:
        """``sample`` as one table (with the split's schema even when nothing is picked)."""
        return pa.concat_tables([self.schema.empty_table(), *self.sample(size, seed, **options)])


def reference_snapshot(
    store: Store,
    run_id: str,
    model: str,
    fingerprint: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Ingest, before it reads or writes ``snapshots/<fingerprint>/``: record the run's reference,
    then wait while a gc that had already marked the snapshot finishes (it will have seen the
    reference and kept it, or deleted it before the reference; ingest then rebuilds it)."""
    store.put_json(
        f"runs/{run_id}/{RUN_RECORD}",
        {"run_id": run_id, "model": model, "fingerprint": fingerprint, "at": dt.datetime.now(dt.UTC).isoformat()},
    )
    tombstone = f"snapshots/{fingerprint}/{TOMBSTONE}"
    while True:
        found = store.get_json_with_etag(tombstone)
        if found is None or time.time() - float(found[0].get("epoch", 0)) >= TOMBSTONE_STALE_SECONDS:
            return
        sleep(0.2)
