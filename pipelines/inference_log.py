"""The inference log: KServe's payload logger writes every request and response the predictor
served into the store; ``compact`` turns that raw log into the Parquet the rest of ctp reads.

Raw layout (what KServe's blob-storage logger writes, kserve/kserve v0.17.0+
pkg/logger/store.go ``getObjectKey``; v0.16.0 the same keys): with the InferenceService's
``logger.url: s3://<bucket>/<store prefix>/inference-log`` every event is one object

    inference-log/<namespace>/<isvc>/<component>[/<storage.path>]/<ce-id>-request.json
    inference-log/<namespace>/<isvc>/<component>[/<storage.path>]/<ce-id>-response.json

holding the JSON of KServe's ``LogRequest`` (pkg/logger/types.go; the default JSON marshaller,
pkg/logger/marshaller_json.go, writes one object per record, an array for ``batchSize`` > 1):
``id`` (the CloudEvent id, shared by a request and its response), ``reqType``
(``org.kubeflow.serving.inference.request`` / ``.response``), ``bytes`` (the payload, base64),
``inferenceService``, ``namespace``, ``component``, ``endpoint`` (``default`` or ``canary``),
``annotations`` (the InferenceService annotations named in ``logger.metadataAnnotations``:
``ctp.dev/version`` says which model version served) and ``occurrenceTime``. KServe v0.16.0
writes the same struct without JSON tags (``Id``, ``ReqType``, ``Bytes``, ...): keys are read
case-insensitively. The payload is the open inference (v2) protocol JSON Triton speaks:
``{"inputs": [{"name", "shape", "datatype", "data"}]}`` and ``{"outputs": [...]}``.

Compacted layout (what ingest, the monitor and the canary analysis read):

    traffic/<dataset>/batch=<batch>/part-0.parquet                 id, image (uint8 H*W*C list)
    predictions/<model>/version=<v>/part-<batch>.parquet           id, image, probs, endpoint

Exactly once, by a plan written before and a done marker written after each chunk:

1. a chunk of raw keys (ids never split across chunks) is planned with a create-only write of
   ``compaction/<dataset>/plans/<chunk>.json``; ``<chunk>`` is a hash of its keys, the batch id
   is derived from the plan, so a rerun rewrites the same objects;
2. its Parquet outputs are written (deterministic names: a rerun overwrites, never adds);
3. ``compaction/<dataset>/done/<chunk>.json`` is written, then the raw objects and the plan are
   deleted. Every run first finishes the plans a killed run left, before it lists the raw log.

Memory is bounded by one chunk: the raw log is listed as a stream (S3 pages of 1,000 keys) and
read ``chunk_objects`` objects at a time.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import time
from collections.abc import Iterator

import numpy as np

from components._shared.dataset import Finding
from components._shared.errors import AlreadyExists, ConfigError, StoreNotFound, StoreUnavailable
from components._shared.store import Store, check_prefix
from components.deploy_canary.config import LOG_PREFIX, VERSION_ANNOTATION  # the InferenceService's logger

REQUEST_TYPE = "org.kubeflow.serving.inference.request"  # kserve pkg/logger/worker.go CEInferenceRequest
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"  # CEInferenceResponse
STATE_PREFIX = "compaction/"
ERROR, WARNING = "error", "warning"
READERS = 8  # concurrent object reads within a chunk
FINDING_CODES = (
    "LOG_UNPARSEABLE",  # an object is not LogRequest JSON (truncated, another format): moved to rejected/
    "LOG_BAD_RECORD",  # a record lacks id, reqType or base64 bytes
    "LOG_DUPLICATE",  # the same event twice: the first is kept
    "LOG_NO_REQUEST",  # a response whose request was not logged: no row (the inputs are unknown)
    "LOG_NO_RESPONSE",  # a request with no logged response (KServe logs only HTTP 200 replies): traffic row only
    "LOG_NO_VERSION",  # no ctp.dev/version annotation on the event: traffic row only
    "LOG_BAD_PAYLOAD",  # not a v2 JSON tensor the model takes or gives
    "LOG_SHAPE",  # image shape differs within a chunk, or outputs do not match inputs
)


@dataclasses.dataclass(frozen=True)
class CompactConfig:
    dataset: str = "digits"  # traffic/<dataset>/
    model_name: str = "digits"  # predictions/<model>/
    log_prefix: str = LOG_PREFIX  # where the logger writes (the InferenceService's logger.url)
    chunk_objects: int = 2000  # raw objects read and written per chunk (bounds memory)
    min_age_seconds: float = 60.0  # younger objects wait: their partner may still be in flight
    input_name: str = "input"  # the ONNX graph's input and output (components/_shared/model)
    output_name: str = "logits"

    def __post_init__(self):
        if self.chunk_objects < 2:
            raise ConfigError(f"chunk_objects={self.chunk_objects}; must be at least 2 (a request and its response)")
        if self.min_age_seconds < 0:
            raise ConfigError(f"min_age_seconds={self.min_age_seconds}; must be 0 or more")
        check_prefix(self.log_prefix)

    @property
    def state(self) -> str:
        return f"{STATE_PREFIX}{self.dataset}/"


@dataclasses.dataclass
class Event:
    id: str
    kind: str  # request | response
    body: bytes
    endpoint: str
    version: str
    time: str


@dataclasses.dataclass
class CompactReport:
    objects: int = 0
    inferences: int = 0
    traffic_rows: int = 0
    prediction_rows: int = 0
    deferred: int = 0  # objects younger than min_age, left for the next run
    resumed: int = 0  # chunks a killed run had planned, finished by this one
    batches: list[str] = dataclasses.field(default_factory=list)
    findings: dict[str, Finding] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def add(self, code: str, severity: str, batch: str, message: str, example: str = "", count: int = 1) -> None:
        found = self.findings.get(code)
        if found is None:
            self.findings[code] = Finding(code, severity, batch, message, count, [example] if example else [])
            return
        found.count += count
        if example and len(found.examples) < 5:
            found.examples.append(example)

    def one_line(self) -> str:
        line = (
            f"log compact: {self.objects} objects, {self.inferences} inferences -> {self.traffic_rows} traffic rows, "
            f"{self.prediction_rows} prediction rows in {len(self.batches)} batches"
        )
        extra = [f"{self.deferred} objects younger than the minimum age wait"] if self.deferred else []
        extra += [f"{self.resumed} interrupted chunks finished"] if self.resumed else []
        extra += [f"{f.code} x{f.count}" for f in self.findings.values()]
        return line + (f" ({'; '.join(extra)})" if extra else "")


class PayloadError(ValueError):
    """A logged payload that is not what the served model takes or gives."""


# ----------------------------------------------------------------------------- raw records


def parse_object(data: bytes) -> list[dict]:
    """One raw object -> its LogRequest records (an object, or an array when KServe batches)."""
    parsed = json.loads(data)
    records = parsed if isinstance(parsed, list) else [parsed]
    if not all(isinstance(r, dict) for r in records):
        raise ValueError("not a LogRequest object or an array of them")
    return records


def to_event(record: dict) -> Event:
    """A LogRequest record (camelCase tags since v0.17.0, Go field names in v0.16.0) -> Event."""
    lower = {k.lower(): v for k, v in record.items()}
    kind = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}.get(lower.get("reqtype"))
    if not lower.get("id") or kind is None or not isinstance(lower.get("bytes"), str):
        raise ValueError(f"record without an id, a known reqType and bytes (reqType={lower.get('reqtype')!r})")
    annotations = lower.get("annotations") or {}
    return Event(
        id=str(lower["id"]),
        kind=kind,
        body=base64.b64decode(lower["bytes"], validate=True),
        endpoint=str(lower.get("endpoint") or ""),
        version=str(annotations.get(VERSION_ANNOTATION, "")) if isinstance(annotations, dict) else "",
        time=str(lower.get("occurrencetime") or ""),
    )


def _tensor(tensors, name: str, what: str) -> np.ndarray:
    if not isinstance(tensors, list) or not tensors:
        raise PayloadError(f"{what} has no tensors")
    named = [t for t in tensors if isinstance(t, dict) and t.get("name") == name]
    tensor = named[0] if named else tensors[0] if len(tensors) == 1 else None
    if tensor is None:
        raise PayloadError(f"{what} has no tensor named {name!r}")
    if (tensor.get("parameters") or {}).get("binary_data_size") is not None:
        raise PayloadError(f"{what} uses the binary tensor extension; only JSON tensors are read")
    if "data" not in tensor or "shape" not in tensor:
        raise PayloadError(f"{what} tensor {name!r} has no data or shape")
    try:
        return np.asarray(tensor["data"], dtype=np.float32).reshape([int(d) for d in tensor["shape"]])
    except (ValueError, TypeError) as err:
        raise PayloadError(f"{what} tensor {name!r}: {err}") from err


def _payload_tensor(body: bytes, what: str, field: str, name: str, dims: str) -> np.ndarray:
    """Tensor ``name`` of a v2 JSON payload's ``field`` list (``inputs`` or ``outputs``), with
    one dimension per letter of ``dims`` (e.g. "N,K")."""
    try:
        payload = json.loads(body)
    except ValueError as err:
        raise PayloadError(f"{what} is not JSON ({err})") from err
    array = _tensor(payload.get(field) if isinstance(payload, dict) else None, name, what)
    if array.ndim != len(dims.split(",")):
        raise PayloadError(f"{what} tensor has shape {list(array.shape)}; expected {dims}")
    return array


def request_images(body: bytes, input_name: str) -> np.ndarray:
    """A v2 inference request -> (N, H, W, C) uint8: the inverse of model.inputs.to_array."""
    array = _payload_tensor(body, "request", "inputs", input_name, "N,C,H,W")
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def response_probs(body: bytes, output_name: str) -> np.ndarray:
    """A v2 inference response -> (N, K) float32 probabilities (the model gives logits)."""
    from components._shared.model.serving import softmax

    return softmax(_payload_tensor(body, "response", "outputs", output_name, "N,K")).astype(np.float32)


# ----------------------------------------------------------------------------- listing


def _stem(key: str) -> str:
    """``.../<id>-request.json`` -> ``.../<id>``: a request and its response share it."""
    return key.rsplit("-", 1)[0] if key.rsplit("/", 1)[-1].count("-") else key


def iter_listing(store: Store, prefix: str) -> Iterator[tuple[str, dt.datetime]]:
    """Keys under ``prefix`` with their modification time, sorted, as a stream on S3 (pages of
    1,000 keys; S3 lists in key order) so memory does not grow with the log."""
    from components._shared.store import S3Store

    prefix = check_prefix(prefix)
    if isinstance(store, S3Store):
        strip = len(store.prefix) + 1 if store.prefix else 0
        name = f"{store.prefix}/{prefix}" if store.prefix else prefix
        for obj in store.client.list_objects(store.bucket, prefix=name, recursive=True):
            if not obj.is_dir:
                yield obj.object_name[strip:], obj.last_modified
        return
    yield from sorted(store.list_modified(prefix).items())


# ----------------------------------------------------------------------------- compaction


def compact(store: Store, config: CompactConfig, *, progress: bool = False, now: dt.datetime | None = None):
    """Compact every raw object older than ``min_age_seconds``; returns a CompactReport."""
    from tqdm import tqdm

    started = time.monotonic()
    report = CompactReport()
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=config.min_age_seconds)
    bar = tqdm(desc="compacting", unit="obj", disable=not progress, mininterval=1.0)
    for plan_key in store.list(f"{config.state}plans/"):  # what a killed run left: finish it first
        report.resumed += 1
        _finish(store, config, store.get_json(plan_key), report, bar)
    chunk: list[tuple[str, dt.datetime]] = []
    for _, group in itertools.groupby(iter_listing(store, config.log_prefix), key=lambda item: _stem(item[0])):
        group = list(group)
        if any(modified > cutoff for _, modified in group):
            report.deferred += len(group)
            continue
        chunk += group
        if len(chunk) >= config.chunk_objects:
            _finish(store, config, _plan(store, config, chunk), report, bar)
            chunk = []
    if chunk:
        _finish(store, config, _plan(store, config, chunk), report, bar)
    bar.close()
    report.seconds = time.monotonic() - started
    return report


def _plan(store: Store, config: CompactConfig, chunk: list[tuple[str, dt.datetime]]) -> dict:
    keys = [key for key, _ in chunk]
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    newest = max(modified for _, modified in chunk).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    plan = {"chunk": digest, "batch": f"{newest}-{digest}", "keys": keys}
    try:
        store.put_json(f"{config.state}plans/{digest}.json", plan, create_only=True)
    except AlreadyExists:
        plan = store.get_json(f"{config.state}plans/{digest}.json")
    return plan


def _finish(store: Store, config: CompactConfig, plan: dict, report: CompactReport, bar) -> None:
    done_key = f"{config.state}done/{plan['chunk']}.json"
    if not store.exists(done_key):
        counts = _write_outputs(store, config, plan, report, bar)
        store.put_json(done_key, {**counts, "batch": plan["batch"], "objects": len(plan["keys"])})
    _delete(store, plan["keys"])
    store.delete(f"{config.state}plans/{plan['chunk']}.json")


def _delete(store: Store, keys: list[str]) -> None:
    """The compacted raw objects: one DeleteObjects request per 1,000 keys on S3 (a missing key
    is no error: a killed run may have deleted some)."""
    from components._shared.store import S3Store

    if isinstance(store, S3Store):
        from minio.deleteobjects import DeleteObject

        names = [f"{store.prefix}/{k}" if store.prefix else k for k in keys]
        for start in range(0, len(names), 1000):
            objects = [DeleteObject(n) for n in names[start : start + 1000]]
            errors = store._retry(
                "delete raw log", lambda o=objects: list(store.client.remove_objects(store.bucket, o))
            )
            if errors:
                raise StoreUnavailable(f"could not delete {len(errors)} compacted raw log objects, e.g. {errors[0]}")
        return
    for key in keys:
        store.delete(key)


def _read_events(store: Store, config: CompactConfig, plan: dict, report: CompactReport, bar) -> dict:
    """id -> {kind: first Event}; duplicates, unreadable objects and records are findings."""
    batch = plan["batch"]
    events: dict[str, dict[str, Event]] = collections.defaultdict(dict)
    from concurrent.futures import ThreadPoolExecutor

    def fetch(key: str) -> bytes | None:
        try:
            return store.get_bytes(key)
        except StoreNotFound:
            return None  # deleted after a done marker we did not see: nothing left to compact

    with ThreadPoolExecutor(READERS) as pool:  # small objects: latency-bound, so read several at once
        fetched = list(pool.map(fetch, plan["keys"]))
    for key, data in zip(plan["keys"], fetched, strict=True):
        bar.update(1)
        report.objects += 1
        if data is None:
            continue
        try:
            records = parse_object(data)
        except ValueError as err:
            report.add("LOG_UNPARSEABLE", ERROR, batch, f"a raw log object is not LogRequest JSON ({err})", key)
            store.put_bytes(f"{config.state}rejected/{key}", data)
            continue
        for record in records:
            try:
                event = to_event(record)
            except (ValueError, TypeError, AttributeError) as err:
                report.add("LOG_BAD_RECORD", ERROR, batch, f"a logged record is not a KServe LogRequest ({err})", key)
                continue
            if event.kind in events[event.id]:
                report.add("LOG_DUPLICATE", WARNING, batch, "an event was logged more than once; kept the first", key)
                continue
            events[event.id][event.kind] = event
    return events


def _write_outputs(store: Store, config: CompactConfig, plan: dict, report: CompactReport, bar) -> dict:
    batch = plan["batch"]
    events = _read_events(store, config, plan, report, bar)
    ids: list[str] = []
    images: list[np.ndarray] = []
    predicted: dict[str, list[tuple[int, np.ndarray, str]]] = collections.defaultdict(list)
    for event_id in sorted(events):
        pair = events[event_id]
        if "request" not in pair:
            report.add("LOG_NO_REQUEST", WARNING, batch, "a response has no logged request; its inputs are unknown")
            continue
        try:
            pixels = request_images(pair["request"].body, config.input_name)
        except PayloadError as err:
            report.add("LOG_BAD_PAYLOAD", ERROR, batch, str(err), event_id)
            continue
        if images and pixels.shape[1:] != images[0].shape[1:]:
            report.add("LOG_SHAPE", ERROR, batch, f"image shape {pixels.shape[1:]} differs from {images[0].shape[1:]}")
            continue
        report.inferences += 1
        first = len(ids)
        ids += [event_id] if len(pixels) == 1 else [f"{event_id}/{i}" for i in range(len(pixels))]
        images.append(pixels)
        response = pair.get("response")
        if response is None:
            report.add("LOG_NO_RESPONSE", WARNING, batch, "a request has no logged response (traffic row only)")
            continue
        version = pair["request"].version or response.version
        if not version:
            report.add(
                "LOG_NO_VERSION",
                WARNING,
                batch,
                f"no {VERSION_ANNOTATION} annotation on the event (logger.metadataAnnotations); traffic row only",
            )
            continue
        try:
            probs = response_probs(response.body, config.output_name)
        except PayloadError as err:
            report.add("LOG_BAD_PAYLOAD", ERROR, batch, str(err), event_id)
            continue
        if len(probs) != len(pixels):
            report.add("LOG_SHAPE", ERROR, batch, f"{len(probs)} outputs for {len(pixels)} inputs", event_id)
            continue
        predicted[version].append((first, probs, response.endpoint))
    if not ids:
        return {"traffic_rows": 0, "prediction_rows": {}}
    counts = {"traffic_rows": len(ids), "prediction_rows": {}}
    pixels = np.concatenate(images)
    _put_table(store, f"traffic/{config.dataset}/batch={batch}/part-0.parquet", ids, pixels)
    report.traffic_rows += len(ids)
    for version, rows in sorted(predicted.items()):
        rows_at = np.concatenate([np.arange(first, first + len(p)) for first, p, _ in rows])
        probs = np.concatenate([p for _, p, _ in rows])
        endpoints = [e for _, p, e in rows for _ in range(len(p))]
        _put_table(
            store,
            f"predictions/{config.model_name}/version={version}/part-{batch}.parquet",
            [ids[i] for i in rows_at],
            pixels[rows_at],
            probs=probs,
            endpoints=endpoints,
        )
        counts["prediction_rows"][version] = len(rows_at)
        report.prediction_rows += len(rows_at)
    report.batches.append(batch)
    return counts


def _put_table(store: Store, key: str, ids: list[str], images: np.ndarray, probs=None, endpoints=None) -> None:
    import pyarrow as pa

    from components._shared.dataset import images_to_array
    from components._shared.store import parquet_bytes

    column, field = images_to_array(images)
    arrays, fields = [pa.array(ids, pa.string()), column], [pa.field("id", pa.string()), field]
    if probs is not None:
        k = probs.shape[1]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1), pa.float32()), k))
        arrays.append(pa.array(endpoints, pa.string()))
        fields += [pa.field("probs", pa.list_(pa.float32(), k)), pa.field("endpoint", pa.string())]
    store.put_bytes(key, parquet_bytes(pa.Table.from_arrays(arrays, schema=pa.schema(fields))))
