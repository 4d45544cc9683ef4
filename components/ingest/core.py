"""Ingest: stream every labelled batch of a dataset record batch by record batch, check each one
(collecting every problem across all batches before failing), split train/test by a stable hash
of the example id, and publish a snapshot whose manifest (written last) carries per-object sha256.

Incremental: batches the champion was trained on (its card's ``data.batches``, the watermark)
contribute only a replay sample of their training rows (``replay_fraction`` of every class, by
default sized by the new data: ``replay_ratio`` x the new rows, and at least MIN_REPLAY_PER_CLASS
rows of a rare class, so no class drops out of the replay); new batches contribute everything.
Test rows are always kept, so evaluation sees every one.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components._shared import lease, retention
from components._shared.dataset import (
    BATCH,
    BUCKETS,
    ID,
    IMAGE,
    LABEL,
    Finding,
    bucket_cut,
    buckets_of,
    check_batch_table,
    id_hashes,
    list_batches,
    pixels_to_array,
    raise_on_errors,
    stable_buckets,
)
from components._shared.errors import AlreadyExists, DataValidationError, StoreUnavailable
from components._shared.readahead import read_ahead
from components._shared.registry import CHAMPION, Registry
from components._shared.snapshot import SPLITS, SplitWriter, read_manifest, snapshot_prefix
from components._shared.store import Store
from components.ingest.config import IngestConfig
from components.ingest.duplicates import DuplicateIds, Repeats

CONTRACT_VERSION = 2  # 2: streamed snapshots with label counts, label names and findings
READ_ROWS = 2048  # rows per record batch: bounds memory whatever the dataset size
WHOLE_ROW_GROUP_BYTES = 64 << 20  # a row group up to this size (uncompressed) is read in one go
MAX_EXAMPLES = 5
ETAG_WORKERS = 8  # concurrent ETag lookups while fingerprinting the source
REPLAY_SALT = "replay:"
MIN_REPLAY_PER_CLASS = 50  # replayed training rows a class keeps (in expectation) whatever the fraction


@dataclasses.dataclass
class IngestResult:
    fingerprint: str
    snapshot: str
    batches: list[str]
    rows: dict[str, int]
    image_shape: list[int]
    classes: list[int]
    new_batches: list[str]  # taken whole; the others contributed a replay sample of their training rows
    label_names: list[str] | None


def consumed_batches(store: Store, model: str) -> list[str]:
    """The watermark: the batches the current champion was trained on ([] without a champion)."""
    registry = Registry(store, model)
    ref = registry.alias(CHAMPION)
    if ref is None or not ref.version:
        return []
    return sorted(registry.card(ref.version).get("data", {}).get("batches", []))


def _source(store: Store, dataset: str) -> dict[str, list[tuple[str, str]]]:
    batches = list_batches(store, dataset)
    if not batches:
        raise DataValidationError(
            f"no batches under {store.describe(f'datasets/{dataset}/')}",
            hint="seed sample data with `ctp data seed` or write datasets/<name>/batch=<id>/*.parquet",
            code="NO_DATA",
        )
    # One request (S3) or one file hash (local) per object: run them side by side, in order.
    keys = [key for batch_keys in batches.values() for key in batch_keys]
    with ThreadPoolExecutor(max_workers=ETAG_WORKERS) as pool:
        etags = dict(zip(keys, pool.map(store.etag, keys)))
    return {batch: [(key, etags[key]) for key in batch_keys] for batch, batch_keys in batches.items()}


def _data_body(source: dict, config: IngestConfig) -> dict:
    """The data a run reads: the objects (ETags) and the split."""
    return {
        "v": CONTRACT_VERSION,
        "test_fraction": config.test_fraction,
        "objects": [list(entry) for entries in source.values() for entry in entries],
    }


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:32]


def _fingerprint(source: dict, config: IngestConfig, consumed: list[str]) -> str:
    """Everything that decides the window: the data, and the replay rule with the watermark it
    applies to. Auto replay's share follows from the objects, the watermark and the ratio; with
    nothing consumed it replays nothing, the same window as a full replay."""
    body = _data_body(source, config)
    if config.replay_auto and consumed:
        body["replay"] = {"ratio": config.replay_ratio, "consumed": consumed, "min_per_class": MIN_REPLAY_PER_CLASS}
    elif not config.replay_auto and config.replay_fraction < 1.0:  # the window then depends on the watermark too
        body["replay"] = {
            "fraction": config.replay_fraction,
            "consumed": consumed,
            "min_per_class": MIN_REPLAY_PER_CLASS,
        }
    return _digest(body)


def _watermark(store: Store, config: IngestConfig) -> list[str]:
    """The consumed batches, when the replay rule needs them (a full replay takes everything)."""
    return consumed_batches(store, config.model_name) if config.replay_fraction < 1.0 else []


def compute_fingerprint(store: Store, config: IngestConfig) -> str:
    """The fingerprint of the snapshot ingest would publish now, from object ETags; cheap (no data
    is read on S3)."""
    return _fingerprint(_source(store, config.dataset), config, _watermark(store, config))


def data_fingerprint(store: Store, config: IngestConfig) -> str:
    """What a run is submitted for (``expected_fingerprint``): the objects and the split, not the
    replay rule's watermark. The champion may move while the run waits for the lease (lease_policy wait):
    its window then follows the new champion, but its data is still the data it was promised."""
    return _digest(_data_body(_source(store, config.dataset), config))


def _column(filesystem, key: str, name: str) -> pa.ChunkedArray:
    """One column of a source object, read alone."""
    with filesystem.open_input_file(key) as handle:
        return pq.read_table(handle, columns=[name]).column(name)


def _label_counts(filesystem, keys: list[str]) -> collections.Counter:
    """Rows per label value in these objects, reading only the label column. An object that cannot
    be read is skipped here: the scan reports it."""
    counts: collections.Counter = collections.Counter()
    for key in keys:
        try:
            for entry in pc.value_counts(_column(filesystem, key, LABEL)).to_pylist():
                counts[entry["values"]] += entry["counts"]
        except (pa.ArrowException, OSError) as err:
            _raise_if_store_failed(err, key)
    return counts


def auto_replay_fraction(old_rows: int, new_rows: int, ratio: float) -> float:
    """REPLAY_AUTO: the share of the old rows that replays ``ratio`` x the new rows (at most all).
    One share for every class, so the replay keeps the history's class mix even when the new
    batch's differs (a per-class ratio would replay little of a class the new batch lacks).
    Nothing new (a forced retrain): all of it."""
    return min(1.0, ratio * new_rows / old_rows) if old_rows and new_rows else 1.0


def replay_shares(label_counts: collections.Counter, fraction: float, test_fraction: float) -> dict:
    """Per label value, the share of its old training rows the replay keeps: ``fraction``, raised
    for a rare class to keep MIN_REPLAY_PER_CLASS of them (all, if it has fewer); to 1/BUCKETS."""
    shares = {}
    for label, rows in label_counts.items():
        floor = MIN_REPLAY_PER_CLASS / max(rows * (1.0 - test_fraction), 1.0)
        shares[label] = bucket_cut(min(1.0, max(fraction, floor))) / BUCKETS
    return shares


def replay_kept(ids: list[str], cuts: np.ndarray) -> np.ndarray:
    """Which old training rows the replay keeps: each id's stable hash (salted, so independent of
    the train/test split) below its class's bucket cut. The same ids are replayed on every run."""
    return stable_buckets(ids, salt=REPLAY_SALT) < cuts


def replay_sample(ids: list[str], labels: np.ndarray, fraction: float, test_fraction: float) -> np.ndarray:
    """The replay of in-memory old rows (all of them, train and test): a test row is always kept
    (the test split stays whole), a training row by the per-class rule ingest applies."""
    shares = replay_shares(collections.Counter(labels.tolist()), fraction, test_fraction)
    is_test = stable_buckets(ids) < bucket_cut(test_fraction)
    cuts = np.array([bucket_cut(shares[label]) for label in labels.tolist()], np.int64)
    return is_test | replay_kept(ids, cuts)


class LabelMap:
    """Integer labels pass through; string labels become class indices in order of first
    appearance (sorted within a record batch), so indices stay put as batches accumulate."""

    def __init__(self):
        self.kind: str | None = None
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def encode(self, column: pa.Array) -> np.ndarray | None:
        kind = "int" if pa.types.is_integer(column.type) else "str"
        if self.kind not in (None, kind):
            return None
        self.kind = kind
        if kind == "int":
            return column.to_numpy(zero_copy_only=False).astype(np.int64)
        values = column.to_pylist()
        for name in sorted(set(values) - self._index.keys()):
            self._index[name] = len(self.names)
            self.names.append(name)
        return np.fromiter((self._index[v] for v in values), np.int64, len(values))


def _raise_if_store_failed(err: Exception, key: str) -> None:
    """pyarrow reports an S3 read that failed past its retries as an OSError naming the AWS
    error: that is the store being down, not a corrupt file, and must not become a finding."""
    if isinstance(err, OSError) and "AWS Error" in str(err):
        raise StoreUnavailable(
            f"reading {key} kept failing: {err}", hint="check that the store is reachable, then re-run"
        ) from None


def _merge(findings: list[Finding], new: Finding) -> None:
    """One finding per (code, batch): counts add up, examples are kept up to MAX_EXAMPLES."""
    for old in findings:
        if (old.code, old.batch) == (new.code, new.batch):
            if old.message.startswith(f"{old.count} "):  # messages lead with their count
                old.message = re.sub(r"^\d+", str(old.count + new.count), old.message)
            old.count += new.count
            old.examples = (old.examples + [e for e in new.examples if e not in old.examples])[:MAX_EXAMPLES]
            return
    findings.append(new)


@dataclasses.dataclass
class _Read:
    """What the reader found in source object number ``obj``: record batches of it (a small row
    group whole, or one batch of a big one: the unit read ahead), or why it cannot be read."""

    batch: str
    obj: int
    rows: list[pa.RecordBatch] = dataclasses.field(default_factory=list)
    problem: Finding | None = None


def _objects(source: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """(batch, key) of every source object, in scan order."""
    return [(batch, key) for batch, entries in source.items() for key, _ in entries]


def _read_source(filesystem, objects: list[tuple[str, str]]) -> Iterator[_Read]:
    for obj, (batch, key) in enumerate(objects):
        yield from _read_object(filesystem, batch, obj, key)


def _read_object(filesystem, batch: str, obj: int, key: str) -> Iterator[_Read]:
    def problem(code: str, message: str, examples=()) -> _Read:
        return _Read(batch, obj, problem=Finding(code, "error", batch, message, max(len(examples), 1), list(examples)))

    try:
        handle = filesystem.open_input_file(key)
    except (pa.ArrowException, OSError) as err:
        _raise_if_store_failed(err, key)
        yield problem("PARQUET_CORRUPT", f"{key} cannot be opened ({err})", [key])
        return
    with handle:
        try:
            if handle.size() == 0:
                yield problem("PARQUET_EMPTY_FILE", f"{key} is a zero-byte file", [key])
                return
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as err:
            _raise_if_store_failed(err, key)
            yield problem("PARQUET_CORRUPT", f"{key} is not a readable Parquet file ({err})", [key])
            return
        missing = [c for c in (ID, IMAGE, LABEL) if c not in parquet.schema_arrow.names]
        if missing:
            yield problem("MISSING_COLUMN", f"missing column(s) {', '.join(missing)}", missing)
            return
        try:
            for group in range(parquet.num_row_groups):
                for record_batches in _row_group_batches(parquet, group):
                    yield _Read(batch, obj, rows=record_batches)
        except (pa.ArrowException, OSError) as err:
            _raise_if_store_failed(err, key)
            yield problem("PARQUET_CORRUPT", f"{key} cannot be read to the end ({err})", [key])


def _row_group_batches(parquet: pq.ParquetFile, group: int) -> Iterator[list[pa.RecordBatch]]:
    """One row group as lists of record batches: read whole when it is small (about 15% faster
    than decoding batch by batch), streamed a batch at a time when it is big (bounded memory)."""
    if parquet.metadata.row_group(group).total_byte_size <= WHOLE_ROW_GROUP_BYTES:
        yield parquet.read_row_group(group).to_batches(max_chunksize=READ_ROWS)
    else:
        for record_batch in parquet.iter_batches(batch_size=READ_ROWS, row_groups=[group]):
            yield [record_batch]


class _Scan:
    """One pass over the source: checks every record batch, streams good rows to the writers.
    Reading runs one row group ahead on a thread (read_ahead), in order."""

    def __init__(self, store: Store, prefix: str, config: IngestConfig, consumed: set[str], replay: dict):
        self.store, self.prefix, self.config, self.consumed, self.replay = store, prefix, config, consumed, replay
        self.findings: list[Finding] = []
        self.writers: dict[str, SplitWriter] = {}
        self.labels = LabelMap()
        self.duplicates = DuplicateIds()
        self.label_counts: dict[str, collections.Counter] = {}
        self.image_shape: tuple[int, ...] | None = None
        self.first_batch = ""
        self.test_cut = bucket_cut(config.test_fraction)

    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def add(self, code: str, batch: str, message: str, count: int = 1, examples=(), severity="error") -> None:
        _merge(self.findings, Finding(code, severity, batch, message, count, list(examples)[:MAX_EXAMPLES]))

    def run(self, source: dict[str, list[tuple[str, str]]]) -> None:
        objects = _objects(source)
        rows, object_rows = collections.Counter(), collections.Counter()
        troubled: set[str] = set()
        try:
            for read in read_ahead(_read_source(self.store.arrow_filesystem(), objects)):
                if read.problem:
                    troubled.add(read.batch)
                    _merge(self.findings, read.problem)
                for record_batch in read.rows:
                    self.check_and_write(read.batch, record_batch, read.obj, object_rows[read.obj])
                    rows[read.batch] += record_batch.num_rows
                    object_rows[read.obj] += record_batch.num_rows
            self.report_duplicates(objects)
        finally:
            self.duplicates.close()
        for batch in source:
            if rows[batch] == 0 and batch not in troubled:
                self.add("EMPTY_BATCH", batch, "batch has no rows", 0)

    def check_and_write(self, batch: str, record_batch: pa.RecordBatch, obj: int, first_row: int) -> None:
        """Check rows first_row.. of source object ``obj``; write them if the scan has no error yet."""
        findings, images = check_batch_table(record_batch, batch)
        for finding in findings:
            _merge(self.findings, finding)
        if images is None:
            return
        if self.image_shape is None:
            self.image_shape, self.first_batch = images.shape[1:], batch
        if images.shape[1:] != self.image_shape:
            self.add(
                "IMAGE_SHAPE",
                batch,
                f"{len(images)} image(s) of shape {images.shape[1:]} differ from "
                f"batch={self.first_batch} {self.image_shape}",
                len(images),
            )
            return
        labels = self.labels.encode(record_batch.column(LABEL))
        if labels is None:
            self.add(
                "LABEL_DTYPE",
                batch,
                f"label type {record_batch.column(LABEL).type} differs from earlier batches ({self.labels.kind})",
                record_batch.num_rows,
            )
            return
        ids = record_batch.column(ID).to_pylist()
        hashes = id_hashes(ids)
        self.duplicates.add(hashes, obj, first_row)
        self.label_counts.setdefault(batch, collections.Counter()).update(labels.tolist())
        if not self.has_errors():
            self.write(batch, record_batch.column(ID), ids, hashes, images, labels)

    def report_duplicates(self, objects: list[tuple[str, str]]) -> None:
        """One warning per batch that repeats ids seen earlier in the scan, with the first repeats."""
        by_batch: dict[str, list[tuple[int, Repeats]]] = collections.defaultdict(list)
        for obj, repeats in self.duplicates.repeats(MAX_EXAMPLES).items():
            by_batch[objects[obj][0]].append((obj, repeats))
        for batch, found in by_batch.items():
            count = sum(repeats.count for _, repeats in found)
            examples = [i for obj, repeats in found for i in self.ids_at(objects[obj][1], repeats.rows)]
            self.add(
                "DUPLICATE_ID", batch, f"{count} example id(s) appeared before", count, examples, severity="warning"
            )

    def ids_at(self, key: str, rows: list[int]) -> list[str]:
        """The ids of a few rows of a source object, read back (only the id column)."""
        try:
            return [str(i) for i in _column(self.store.arrow_filesystem(), key, ID).take(rows).to_pylist()]
        except (pa.ArrowException, OSError):  # a file that fails later on is an error of its own
            return [f"{key} row {row}" for row in rows]

    def write(
        self,
        batch: str,
        id_column: pa.Array,
        ids: list[str],
        hashes: np.ndarray,
        images: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        is_test = buckets_of(hashes) < self.test_cut
        keep_train = ~is_test
        if batch in self.consumed and self.replay:
            keep_train &= replay_kept(ids, self.row_replay_cuts(labels))
        table = self.to_table(id_column, images, labels, batch)
        for split, mask in (("train", keep_train), ("test", is_test)):
            self.writer(split, table.schema).write_table(table.filter(pa.array(mask)))

    def row_replay_cuts(self, labels: np.ndarray) -> np.ndarray:
        """Each row's replay bucket cut, by its class (labels are class indices; shares are keyed
        by the label values the source holds)."""
        cuts = np.full(int(labels.max(initial=0)) + 1, bucket_cut(self.config.replay_fraction), np.int64)
        for index in np.unique(labels).tolist():
            value = index if self.labels.kind == "int" else self.labels.names[index]
            cuts[index] = bucket_cut(self.replay.get(value, self.config.replay_fraction))
        return cuts[labels]

    def writer(self, split: str, schema: pa.Schema) -> SplitWriter:
        if split not in self.writers:
            self.writers[split] = SplitWriter(self.store, self.prefix + f"{split}.parquet", schema)
        return self.writers[split]

    @staticmethod
    def to_table(id_column: pa.Array, images: np.ndarray, labels: np.ndarray, batch: str) -> pa.Table:
        image_array, field = pixels_to_array(images)
        schema = pa.schema(
            [pa.field(ID, pa.string()), pa.field(BATCH, pa.string()), field, pa.field(LABEL, pa.int64())]
        )
        return pa.Table.from_arrays(
            [
                id_column.cast(pa.string()),
                pa.array([batch] * len(labels), pa.string()),
                image_array,
                pa.array(labels, pa.int64()),
            ],
            schema=schema,
        )

    def close(self) -> dict[str, dict]:
        return {f"{split}.parquet": self.writers[split].close() for split in SPLITS if split in self.writers}

    def abort(self) -> None:
        for writer in self.writers.values():
            if not writer.closed:
                writer.close()
            self.store.delete(writer.key)


LEASE_POLL_SECONDS = 5.0


def begin_run(store: Store, config: IngestConfig, run_id: str, *, poll_seconds: float = LEASE_POLL_SECONDS) -> dict:
    """Take the model's lease for this run. Returns {} when it holds it; else the recorded skip
    decision (runs/<run-id>/decision.json) naming the run that is active."""
    claim = lease.acquire(
        store,
        config.model_name,
        run_id,
        config.lease_ttl_seconds,
        policy=config.lease_policy,
        wait_seconds=config.lease_wait_seconds,
        poll_seconds=poll_seconds,
    )
    if claim.won:
        return {}
    waited = f" (waited {claim.waited_seconds:.0f} s)" if config.lease_policy == "wait" else ""
    record = {
        "run_id": run_id,
        "model": config.model_name,
        "decision": "skip",
        "reason": f"another run is active (run {claim.holder}){waited}",
        "active_run": claim.holder,
        "lease_policy": config.lease_policy,
        "waited_seconds": claim.waited_seconds,
        "version": None,
        "decided_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    store.put_json(f"runs/{run_id}/decision.json", record)
    return record


def no_new_data(store: Store, config: IngestConfig, run_id: str) -> dict:
    """The recorded skip decision when every labelled batch is one the champion was trained on
    (its card's data.batches, the watermark) and the run is not forced; else {}. Costs a listing
    and one card read: a quiet night's scheduled run ends here instead of retraining."""
    if config.force:
        return {}
    consumed = set(consumed_batches(store, config.model_name))
    batches = list(list_batches(store, config.dataset))
    if not consumed or not batches or not set(batches) <= consumed:
        return {}
    record = {
        "run_id": run_id,
        "model": config.model_name,
        "decision": "skip",
        "reason": f"no new data: the champion was trained on all {len(batches)} batches of {config.dataset} "
        f"(newest {batches[-1]}); add a batch, or force=true to retrain anyway",
        "version": None,
        "decided_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    store.put_json(f"runs/{run_id}/decision.json", record)
    return record


def ingest(store: Store, config: IngestConfig, *, run_id: str = "") -> IngestResult:
    """``run_id``: record the run's snapshot reference (runs/<run-id>/run.json) before touching the
    snapshot, so a concurrent `ctp store gc` keeps it (retention.reference_snapshot)."""
    source = _source(store, config.dataset)
    consumed = _watermark(store, config)
    fingerprint = _fingerprint(source, config, consumed)
    found = _digest(_data_body(source, config))  # data_fingerprint
    if config.expected_fingerprint and config.expected_fingerprint != found:
        raise DataValidationError(
            f"data changed since the run was submitted (data fingerprint {found}, "
            f"expected {config.expected_fingerprint})",
            hint="submit a new run so its cache key matches the data",
            code="FINGERPRINT_MISMATCH",
        )
    if run_id:
        retention.reference_snapshot(store, run_id, config.model_name, fingerprint)
    prefix = snapshot_prefix(fingerprint)
    if store.exists(prefix + "manifest.json"):
        return _result(read_manifest(store, fingerprint))

    fraction, replay = _replay_rule(store, config, source, consumed)
    scan = _Scan(store, prefix, dataclasses.replace(config, replay_fraction=fraction), set(consumed), replay)
    scan.run(source)
    if scan.has_errors() or not scan.writers:
        scan.abort()
        raise_on_errors(scan.findings, hint="fix or remove the batch, then re-run")
    objects = scan.close()  # blobs first; the manifest makes them real
    manifest = {
        "contract": CONTRACT_VERSION,
        "dataset": config.dataset,
        "fingerprint": fingerprint,
        "test_fraction": config.test_fraction,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "batches": {b: [{"key": k, "etag": e} for k, e in entries] for b, entries in source.items()},
        "window": {
            "new": [b for b in source if b not in consumed],
            "replayed": [b for b in source if b in consumed],
            "replay_fraction": fraction,  # the share applied (auto: computed from replay_ratio)
            "replay_ratio": config.replay_ratio if config.replay_auto and consumed else None,
            "replay_share": {str(label): replay[label] for label in sorted(replay, key=str)},
        },
        "objects": objects,
        "image_shape": list(scan.image_shape),
        "classes": sorted({c for counts in scan.label_counts.values() for c in counts}),
        "label_kind": scan.labels.kind,  # "int" or "str": part of the data contract the champion keeps
        "label_names": scan.labels.names if scan.labels.kind == "str" else None,
        "label_counts": {b: {str(c): n for c, n in sorted(counts.items())} for b, counts in scan.label_counts.items()},
        "findings": [dataclasses.asdict(f) for f in scan.findings],
    }
    try:
        store.put_json(prefix + "manifest.json", manifest, create_only=True)
    except AlreadyExists:  # a concurrent run published the same snapshot first: use theirs
        manifest = read_manifest(store, fingerprint)
    return _result(manifest)


def _replay_rule(store: Store, config: IngestConfig, source: dict, consumed: list[str]) -> tuple[float, dict]:
    """The replay share applied to old training rows, and its per-class shares (none without a
    watermark). Reads only the label column: of the old objects, and of the new ones when auto."""
    if not consumed:
        return (1.0 if config.replay_auto else config.replay_fraction), {}
    filesystem = store.arrow_filesystem()
    old_counts = _label_counts(filesystem, [key for batch in consumed for key, _ in source.get(batch, [])])
    fraction = config.replay_fraction
    if config.replay_auto:
        new_keys = [key for batch, entries in source.items() if batch not in consumed for key, _ in entries]
        new_rows = sum(_label_counts(filesystem, new_keys).values())
        fraction = auto_replay_fraction(sum(old_counts.values()), new_rows, config.replay_ratio)
    return fraction, replay_shares(old_counts, fraction, config.test_fraction)


def _result(manifest: dict) -> IngestResult:
    return IngestResult(
        fingerprint=manifest["fingerprint"],
        snapshot=snapshot_prefix(manifest["fingerprint"]),
        batches=list(manifest["batches"]),
        rows={s: manifest["objects"][f"{s}.parquet"]["rows"] for s in SPLITS},
        image_shape=manifest["image_shape"],
        classes=manifest["classes"],
        new_batches=manifest["window"]["new"],
        label_names=manifest["label_names"],
    )
