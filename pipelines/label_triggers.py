"""The monitor's triggers on labelled data newer than the champion's watermark (the batches its card
``data.batches`` lists, as ingest reads it: ``components/ingest/core.py consumed_batches``):

- performance: the champion's accuracy on the newest of those rows (at most ``label_rows``),
  scored through its ONNX file as it is served, below ``min_accuracy`` or more than ``max_drop``
  below its own test accuracy (card ``metrics.accuracy``);
- new_labels: at least ``min_new_rows`` such rows.

Each returns its evidence (a JSON-able dict with ``enabled``, ``fired``, ``decision``, ``reason``);
pipelines/monitor.py puts them in the check's report beside the drift evidence.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components._shared.dataset import LABEL, check_batch_table, list_batches
from components._shared.errors import CtpError
from components._shared.model.files import ONNX_FILE
from components._shared.registry import Registry
from components._shared.store import Store, read_parquet
from pipelines.monitor_config import MonitorConfig


def new_batches(store: Store, dataset: str, card: dict) -> dict[str, list[str]]:
    """Labelled batches the champion was not trained on (ingest's rule: not in ``data.batches``)."""
    consumed = set(card.get("data", {}).get("batches", []))
    return {batch: keys for batch, keys in list_batches(store, dataset).items() if batch not in consumed}


def count_rows(store: Store, batches: dict[str, list[str]]) -> tuple[dict[str, int], list[str]]:
    """Rows per batch from the Parquet footers only, and the objects whose footer cannot be read."""
    filesystem, rows, unreadable = store.arrow_filesystem(), {}, []
    for batch, keys in batches.items():
        rows[batch] = 0
        for key in keys:
            try:
                with filesystem.open_input_file(key) as handle:
                    rows[batch] += pq.ParquetFile(handle).metadata.num_rows
            except pa.ArrowInvalid:  # not Parquet: ingest reports it; counting goes on
                unreadable.append(key)
    return rows, unreadable


def labels_section(store: Store, config: MonitorConfig, card: dict) -> tuple[dict, dict[str, list[str]]]:
    """What is newer than the watermark: batches and rows (counted from footers)."""
    batches = new_batches(store, config.dataset, card)
    rows, unreadable = count_rows(store, batches)
    section = {
        "watermark": sorted(card.get("data", {}).get("batches", [])),
        "new_batches": list(batches),
        "newest": list(batches)[-1] if batches else "",
        "rows": sum(rows.values()),
        "rows_by_batch": rows,
        "unreadable": unreadable,
    }
    return section, batches


def new_labels_evidence(config: MonitorConfig, labels: dict) -> dict:
    if not config.min_new_rows:
        return {"enabled": False, "fired": False, "decision": "off", "reason": "min_new_rows is 0"}
    fired = labels["rows"] >= config.min_new_rows
    return {
        "enabled": True,
        "fired": fired,
        "decision": "new_labels" if fired else "too_few",
        "reason": f"{labels['rows']} labelled rows newer than the watermark (trigger at {config.min_new_rows})",
        "batches": labels["new_batches"],
        "rows": labels["rows"],
        "min_new_rows": config.min_new_rows,
    }


def _class_indices(labels: pa.ChunkedArray | pa.Array, card: dict) -> np.ndarray:
    """Labels as the champion's class indices; a label it does not know is -1 (never predicted)."""
    data = card.get("data", {})
    if pa.types.is_integer(labels.type):
        return labels.to_numpy(zero_copy_only=False).astype(np.int64)
    index = {name: i for i, name in enumerate(data.get("label_names") or [])}
    return np.asarray([index.get(v, -1) for v in labels.to_pylist()], np.int64)


def _newest_rows(store: Store, batches: dict[str, list[str]], limit: int) -> tuple[list, list[str]]:
    """Decoded (batch, images, labels table column) of the newest batches, up to ``limit`` rows; objects
    that fail the data contract are skipped and named."""
    chunks, skipped, taken = [], [], 0
    for batch, keys in reversed(list(batches.items())):
        for key in keys:
            table = read_parquet(store, key)
            findings, images = check_batch_table(table, batch, labelled=True)
            if findings or images is None:
                skipped.append(f"{key}: {findings[0].code if findings else 'UNDECODABLE'}")
                continue
            first = len(images) - min(len(images), limit - taken)  # the object's newest rows: its last ones
            chunks.append((batch, images[first:], table.column(LABEL).slice(first)))
            keep = len(images) - first
            taken += keep
            if taken >= limit:
                return chunks, skipped
    return chunks, skipped


def performance_evidence(
    store: Store, config: MonitorConfig, version: str, card: dict, batches: dict[str, list[str]]
) -> dict:
    """The champion's accuracy on the newest labelled rows it was not trained on, against the bars."""
    if not (config.min_accuracy or config.max_drop):
        return {"enabled": False, "fired": False, "decision": "off", "reason": "min_accuracy and max_drop are 0"}
    test_accuracy = card.get("metrics", {}).get("accuracy")
    base = {
        "enabled": True,
        "fired": False,
        "version": version,
        "test_accuracy": test_accuracy,
        "min_accuracy": config.min_accuracy,
        "max_drop": config.max_drop,
    }
    if ONNX_FILE not in card.get("files", {}):
        return {**base, "decision": "no_model", "reason": f"champion {version} has no {ONNX_FILE}"}
    chunks, skipped = _newest_rows(store, batches, config.label_rows)
    rows = sum(len(images) for _, images, _ in chunks)
    base |= {"batches": sorted({batch for batch, _, _ in chunks}), "rows": rows, "skipped": skipped}
    if rows < config.min_scored_rows:
        return {
            **base,
            "decision": "too_few_rows",
            "reason": f"{rows} new labelled rows to score; need {config.min_scored_rows}",
        }
    from components._shared.model.serving import onnx_probabilities

    images = np.concatenate([images for _, images, _ in chunks])
    labels = np.concatenate([_class_indices(column, card) for _, _, column in chunks])
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Registry(store, config.model_name).fetch(version, ONNX_FILE, Path(tmp) / ONNX_FILE)
        try:
            predicted = onnx_probabilities(onnx, images).argmax(axis=1)
        except Exception as err:  # noqa: BLE001 (onnxruntime raises its own types: shape, dtype)
            raise CtpError(
                f"champion {version} cannot score the new labelled rows: {str(err).splitlines()[0][:200]}",
                hint="the new batches' images do not fit the champion's input; check the data contract",
                code="PERFORMANCE_SCORING",
            ) from err
    correct = predicted == labels
    accuracy = float(correct.mean())
    by_batch: dict[str, list[bool]] = {}
    start = 0
    for batch, batch_images, _ in chunks:
        by_batch[batch] = by_batch.get(batch, []) + correct[start : start + len(batch_images)].tolist()
        start += len(batch_images)
    drop = None if test_accuracy is None else float(test_accuracy) - accuracy
    reasons = []
    if config.min_accuracy and accuracy < config.min_accuracy:
        reasons.append(f"below min_accuracy {config.min_accuracy:g}")
    if config.max_drop and drop is not None and drop > config.max_drop:
        reasons.append(f"{drop:.3f} below its test accuracy {test_accuracy:.3f} (max_drop {config.max_drop:g})")
    fired = bool(reasons)
    return {
        **base,
        "fired": fired,
        "decision": "degraded" if fired else "ok",
        "reason": f"champion accuracy {accuracy:.3f} on {rows} new labelled rows"
        + (": " + "; ".join(reasons) if fired else ""),
        "accuracy": accuracy,
        "correct": int(correct.sum()),
        "drop": drop,
        "unknown_labels": int((labels < 0).sum()),
        "by_batch": {b: float(np.mean(v)) for b, v in sorted(by_batch.items())},
    }
