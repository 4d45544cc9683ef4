"""The data contract: labelled batches and snapshots, their columns, and the checks on them.

A batch is ``datasets/<name>/batch=<id>/*.parquet`` (traffic: ``traffic/<name>/...``) with
columns ``id`` (string), ``image`` (PNG/JPEG bytes, or a fixed-size uint8 list whose field
metadata ``ctp.shape`` is ``H,W,C``) and ``label`` (integer; absent in traffic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from typing import Any

import numpy as np
import pyarrow as pa

from components._shared.store import Store

ID, IMAGE, LABEL, BATCH = "id", "image", "label", "batch"
SHAPE_KEY = b"ctp.shape"
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclasses.dataclass
class Finding:
    """One validation result: a stable code, a severity, where, how many, and examples."""

    code: str
    severity: str  # "error" stops the run before training; "warning" is reported
    batch: str
    message: str
    count: int = 1
    examples: list[Any] = dataclasses.field(default_factory=list)

    def one_line(self) -> str:
        return f"{self.code}: batch={self.batch}: {self.message}"


def dataset_prefix(dataset: str, kind: str = "datasets") -> str:
    return f"{kind}/{dataset}/"


def list_batches(store: Store, dataset: str, kind: str = "datasets") -> dict[str, list[str]]:
    """Batch id -> its Parquet object keys, in batch order."""
    prefix = dataset_prefix(dataset, kind)
    batches: dict[str, list[str]] = {}
    for key in store.list(prefix):
        part = key[len(prefix):].split("/", 1)[0]
        if part.startswith("batch=") and key.endswith(".parquet"):
            batches.setdefault(part[len("batch="):], []).append(key)
    return dict(sorted(batches.items()))


def image_field(shape: tuple[int, int, int]) -> pa.Field:
    h, w, c = shape
    return pa.field(IMAGE, pa.list_(pa.uint8(), h * w * c), metadata={SHAPE_KEY: f"{h},{w},{c}".encode()})


def images_to_array(images: np.ndarray) -> tuple[pa.Array, pa.Field]:
    """(N, H, W, C) uint8 -> a fixed-size list column and its field (shape in metadata)."""
    n, h, w, c = images.shape
    flat = pa.array(np.ascontiguousarray(images, dtype=np.uint8).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, h * w * c), image_field((h, w, c))


def field_shape(field: pa.Field) -> tuple[int, int, int] | None:
    meta = field.metadata or {}
    if SHAPE_KEY not in meta:
        return None
    parts = tuple(int(p) for p in meta[SHAPE_KEY].decode().split(","))
    if len(parts) != 3 or min(parts) < 1 or parts[0] * parts[1] * parts[2] > MAX_IMAGE_PIXELS * 4:
        raise ValueError(f"declared image shape {parts} is not a sane H,W,C")
    return parts  # type: ignore[return-value]


def decode_images(table: pa.Table) -> np.ndarray:
    """The image column as (N, H, W, C) uint8. Raises ValueError on undecodable images."""
    field = table.schema.field(IMAGE)
    column = table.column(IMAGE).combine_chunks()
    if pa.types.is_fixed_size_list(field.type) or pa.types.is_list(field.type):
        shape = field_shape(field)
        if shape is None:
            raise ValueError("array images need field metadata ctp.shape=H,W,C")
        flat = column.flatten().to_numpy(zero_copy_only=False)
        if flat.dtype.kind == "f" and not np.isfinite(flat).all():
            raise ValueError("image arrays contain NaN or Inf values")
        if flat.size and (flat.min() < 0 or flat.max() > 255):
            raise ValueError("image values fall outside 0..255")
        if flat.size != len(column) * shape[0] * shape[1] * shape[2]:
            raise ValueError(f"image arrays do not match the declared shape {shape}")
        return flat.astype(np.uint8, copy=False).reshape((len(column), *shape))
    if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
        return np.stack([_decode_encoded(b) for b in column.to_pylist()]) if len(column) else np.zeros((0, 1, 1, 1), np.uint8)
    raise ValueError(f"image column has type {field.type}; expected bytes or a uint8 list")


def _decode_encoded(data: bytes | None) -> np.ndarray:
    from PIL import Image

    if not data:
        raise ValueError("empty image bytes")
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"image of {img.width}x{img.height} exceeds {MAX_IMAGE_PIXELS} pixels")
        array = np.asarray(img.convert("L") if img.mode in ("L", "P", "1", "I", "F") else img.convert("RGB"))
    return array[..., None] if array.ndim == 2 else array


def check_batch_table(table: pa.Table, batch: str, *, labelled: bool = True) -> list[Finding]:
    """Structural checks that make a batch unusable: each finding is an error."""
    findings: list[Finding] = []
    required = [ID, IMAGE, LABEL] if labelled else [ID, IMAGE]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        findings.append(Finding("MISSING_COLUMN", "error", batch, f"missing column(s) {', '.join(missing)}",
                                len(missing), missing))
    if table.num_rows == 0:
        findings.append(Finding("EMPTY_BATCH", "error", batch, "batch has no rows", 0))
    if findings:
        return findings
    if labelled:
        findings += _check_labels(table.column(LABEL), batch)
    try:
        decode_images(table)
    except (ValueError, OSError) as err:
        findings.append(Finding("IMAGE_UNDECODABLE", "error", batch, f"images cannot be read: {err}"))
    return findings


def _check_labels(column: pa.ChunkedArray, batch: str) -> list[Finding]:
    if pa.types.is_floating(column.type) and column.null_count < len(column):
        values = column.to_numpy(zero_copy_only=False)
        if np.isnan(values).any():
            return [Finding("LABEL_NAN", "error", batch, f"{int(np.isnan(values).sum())} label(s) are NaN",
                            int(np.isnan(values).sum()))]
    if not pa.types.is_integer(column.type):
        return [Finding("LABEL_DTYPE", "error", batch, f"label column has type {column.type}; expected integer")]
    if column.null_count:
        return [Finding("LABEL_NULL", "error", batch, f"{column.null_count} label(s) are null", column.null_count)]
    labels = column.to_numpy()
    negative = int((labels < 0).sum())
    if negative:
        return [Finding("LABEL_DOMAIN", "error", batch, f"{negative} label(s) are negative", negative,
                        sorted(set(labels[labels < 0].tolist()))[:5])]
    return []


def stable_bucket(example_id: str, buckets: int = 10_000) -> int:
    """A split bucket that depends only on the example id, so an example never changes split."""
    digest = hashlib.sha256(example_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def is_test_example(example_id: str, test_fraction: float) -> bool:
    return stable_bucket(example_id) < int(round(test_fraction * 10_000))
