"""The data contract: labelled batches and snapshots, their columns, and the checks on them.

A batch is ``datasets/<name>/batch=<id>/*.parquet`` (traffic: ``traffic/<name>/...``) with
columns ``id`` (string), ``image`` (PNG/JPEG bytes, or a fixed-size uint8 list whose field
metadata ``ctp.shape`` is ``H,W,C``) and ``label`` (integer or string; absent in traffic).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components._shared.errors import DataValidationError
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


def raise_on_errors(findings: list[Finding], hint: str) -> None:
    """One line naming the first error and the code and batch of every other one."""
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return
    first, rest = errors[0], errors[1:]
    more = ""
    if rest:
        named = ", ".join(f"{f.code} batch={f.batch}" for f in rest[:10])
        more = f" (+{len(rest)} more: {named}{', ...' if len(rest) > 10 else ''})"
    raise DataValidationError(f"batch={first.batch}: {first.message}{more}", code=first.code, hint=hint)


def dataset_prefix(dataset: str, kind: str = "datasets") -> str:
    return f"{kind}/{dataset}/"


def list_batches(store: Store, dataset: str, kind: str = "datasets") -> dict[str, list[str]]:
    """Batch id -> its Parquet object keys, in batch order."""
    prefix = dataset_prefix(dataset, kind)
    batches: dict[str, list[str]] = {}
    for key in store.list(prefix):
        part = key[len(prefix) :].split("/", 1)[0]
        if part.startswith("batch=") and key.endswith(".parquet"):
            batches.setdefault(part[len("batch=") :], []).append(key)
    return dict(sorted(batches.items()))


def image_field(shape: tuple[int, int, int]) -> pa.Field:
    h, w, c = shape
    return pa.field(IMAGE, pa.list_(pa.uint8(), h * w * c), metadata={SHAPE_KEY: f"{h},{w},{c}".encode()})


def images_to_array(images: np.ndarray) -> tuple[pa.Array, pa.Field]:
    """(N, H, W, C) uint8 -> a fixed-size list column and its field (shape in metadata)."""
    n, h, w, c = images.shape
    flat = pa.array(np.ascontiguousarray(images, dtype=np.uint8).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, h * w * c), image_field((h, w, c))


def pixels_to_array(images: np.ndarray) -> tuple[pa.Array, pa.Field]:
    """(N, H, W, C) uint8 -> one fixed-size binary value per image (the snapshot's format).

    Parquet has no 8-bit integer type: a uint8 list is stored as INT32, four bytes per pixel,
    while raw bytes are written and read about ten times faster."""
    n, h, w, c = images.shape
    buffer = pa.py_buffer(np.ascontiguousarray(images, dtype=np.uint8))  # zero-copy: arrow keeps a reference
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(h * w * c), n, [None, buffer])
    return array, pa.field(IMAGE, pa.binary(h * w * c), metadata={SHAPE_KEY: f"{h},{w},{c}".encode()})


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
    findings, images = check_images(table, "-")
    if findings:
        raise ValueError(findings[0].message)
    return images


def check_images(table: pa.Table | pa.RecordBatch, batch: str) -> tuple[list[Finding], np.ndarray | None]:
    """Decode the image column, naming every problem (with the ids of example rows)."""
    field = table.schema.field(IMAGE)
    column = table.column(IMAGE)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(field.type) or pa.types.is_list(field.type):
        return _check_array_images(column, field, table, batch)
    if pa.types.is_fixed_size_binary(field.type) and SHAPE_KEY in (field.metadata or {}):
        return _check_pixel_images(column, field, table, batch)
    if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
        return _check_encoded_images(column, table, batch)
    return [
        Finding(
            "IMAGE_DTYPE",
            "error",
            batch,
            f"image column has type {field.type}; expected bytes or a uint8 list",
            len(column),
        )
    ], None


def _ids(table, rows: np.ndarray) -> list:
    if ID not in table.column_names:
        return rows[:5].tolist()
    return [table.column(ID)[int(i)].as_py() for i in rows[:5]]


def _check_array_images(column, field, table, batch) -> tuple[list[Finding], np.ndarray | None]:
    try:
        shape = field_shape(field)
    except ValueError as err:
        return [Finding("IMAGE_SHAPE", "error", batch, str(err), len(column))], None
    if shape is None:
        return [
            Finding(
                "IMAGE_UNDECODABLE", "error", batch, "array images need field metadata ctp.shape=H,W,C", len(column)
            )
        ], None
    size = shape[0] * shape[1] * shape[2]
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((lengths != size) | np.asarray(column.is_null()))
    if bad.size:
        return [
            Finding(
                "IMAGE_SHAPE",
                "error",
                batch,
                f"{bad.size} image(s) do not hold the declared shape {shape}",
                int(bad.size),
                _ids(table, bad),
            )
        ], None
    flat = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), size)
    if flat.dtype == np.uint8:  # the common case: every value is a valid pixel by its type
        return [], flat.reshape((len(column), *shape))
    findings = []
    if flat.dtype.kind == "f":
        nan_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
        if nan_rows.size:
            findings.append(
                Finding(
                    "IMAGE_NAN",
                    "error",
                    batch,
                    f"{nan_rows.size} image(s) contain NaN or Inf",
                    int(nan_rows.size),
                    _ids(table, nan_rows),
                )
            )
    with np.errstate(invalid="ignore"):
        out_of_range = np.flatnonzero(((flat < 0) | (flat > 255)).any(axis=1))
    if out_of_range.size:
        findings.append(
            Finding(
                "IMAGE_RANGE",
                "error",
                batch,
                f"{out_of_range.size} image(s) have values outside 0..255",
                int(out_of_range.size),
                _ids(table, out_of_range),
            )
        )
    if findings:
        return findings, None
    return [], flat.astype(np.uint8, copy=False).reshape((len(column), *shape))


def _check_pixel_images(column, field, table, batch) -> tuple[list[Finding], np.ndarray | None]:
    try:
        shape = field_shape(field)
    except ValueError as err:  # a declared shape that is huge or not H,W,C
        return [Finding("IMAGE_SHAPE", "error", batch, str(err), len(column))], None
    if field.type.byte_width != shape[0] * shape[1] * shape[2]:
        return [
            Finding(
                "IMAGE_SHAPE",
                "error",
                batch,
                f"{field.type.byte_width} bytes per image do not hold the declared shape {shape}",
                len(column),
            )
        ], None
    if column.null_count:
        rows = np.flatnonzero(np.asarray(column.is_null()))
        return [
            Finding(
                "IMAGE_UNDECODABLE",
                "error",
                batch,
                f"{column.null_count} image(s) are null",
                column.null_count,
                _ids(table, rows),
            )
        ], None
    width = field.type.byte_width
    data = np.frombuffer(column.buffers()[1], np.uint8)[column.offset * width : (column.offset + len(column)) * width]
    return [], data.reshape((len(column), *shape))


def _check_encoded_images(column, table, batch) -> tuple[list[Finding], np.ndarray | None]:
    decoded, bad, reasons = [], [], []
    for row, data in enumerate(column.to_pylist()):
        try:
            decoded.append(decode_encoded(data))
        except (ValueError, OSError) as err:
            bad.append(row)
            reasons.append(str(err))
    if bad:
        rows = np.asarray(bad)
        return [
            Finding(
                "IMAGE_UNDECODABLE",
                "error",
                batch,
                f"{len(bad)} image(s) cannot be decoded (first: {reasons[0][:120]})",
                len(bad),
                _ids(table, rows),
            )
        ], None
    shapes = collections.Counter(img.shape for img in decoded)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        rows = np.asarray([i for i, img in enumerate(decoded) if img.shape != common])
        return [
            Finding(
                "IMAGE_SHAPE",
                "error",
                batch,
                f"{rows.size} image(s) differ from the batch's shape {common}",
                int(rows.size),
                _ids(table, rows),
            )
        ], None
    if not decoded:
        return [], np.zeros((0, 1, 1, 1), np.uint8)
    return [], np.stack(decoded)


def stored_images(table: pa.Table) -> np.ndarray:
    """The image column indexable by row, without decoding PNG/JPEG: pixels as (N, H, W, C) uint8
    (a view of a snapshot's raw bytes), encoded images as an object array of their bytes. A loader
    holds this form for its shuffle window and decodes one batch at a time (decode_encoded)."""
    field = table.schema.field(IMAGE)
    if not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
        return decode_images(table)
    encoded = np.empty(table.num_rows, dtype=object)
    encoded[:] = table.column(IMAGE).to_pylist()
    return encoded


def decode_encoded(data: bytes | None) -> np.ndarray:
    """PNG/JPEG bytes as (H, W, C) uint8 (L or RGB). Raises ValueError (or OSError) on bytes that
    are not an image it accepts."""
    from PIL import Image

    if not data:
        raise ValueError("empty image bytes")
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"image of {img.width}x{img.height} exceeds {MAX_IMAGE_PIXELS} pixels")
        if img.mode not in ("L", "RGB"):  # convert() copies even an image already in its mode
            img = img.convert("L" if img.mode in ("P", "1", "I", "F") else "RGB")
        array = np.asarray(img)
    return array[..., None] if array.ndim == 2 else array


JPEG_START = b"\xff\xd8"  # SOI marker
# libjpeg's colour spaces that decode to the channels Pillow gives (L: 1, RGB: 3): {channels: (sources, target)}
FAST_JPEG = {1: ({"Gray"}, "gray"), 3: ({"YCbCr", "RGB"}, "rgb")}


def decode_into(data: bytes | None, target: np.ndarray) -> np.ndarray:
    """PNG/JPEG bytes decoded into ``target`` (H, W, C) uint8, the pixels decode_encoded gives. A JPEG
    of target's shape goes through simplejpeg (libjpeg-turbo, as under Pillow, with the same DCT and
    upsampling) straight into target: 1.5-2.5x faster than Pillow, whose marker parsing is Python.
    Anything else goes through Pillow and a copy. Raises ValueError on bytes that are not such an
    image or an image of another shape."""
    import simplejpeg

    if data and data[:2] == JPEG_START and target.shape[-1] in FAST_JPEG and target.flags.c_contiguous:
        sources, colorspace = FAST_JPEG[target.shape[-1]]
        try:
            height, width, source, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            height = width = source = None  # Pillow gives the error
        if (height, width) == target.shape[:2] and source in sources:
            return simplejpeg.decode_jpeg(data, colorspace, buffer=target).reshape(target.shape)
    image = decode_encoded(data)
    check_image_shape(image.shape, target.shape)
    target[...] = image
    return target


def check_image_shape(shape: tuple[int, ...], batch_shape: tuple[int, ...]) -> None:
    """Raises ValueError if an image of ``shape`` cannot join a batch of ``batch_shape`` images."""
    if shape != batch_shape:
        raise ValueError(f"an image of shape {shape} among images of shape {batch_shape}")


def check_batch_table(
    table: pa.Table | pa.RecordBatch, batch: str, *, labelled: bool = True
) -> tuple[list[Finding], np.ndarray | None]:
    """Every problem that makes rows unusable (each an error), and the decoded images if none."""
    required = [ID, IMAGE, LABEL] if labelled else [ID, IMAGE]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        return [
            Finding("MISSING_COLUMN", "error", batch, f"missing column(s) {', '.join(missing)}", len(missing), missing)
        ], None
    findings = []
    if table.column(ID).null_count:
        findings.append(
            Finding(
                "ID_NULL", "error", batch, f"{table.column(ID).null_count} id(s) are null", table.column(ID).null_count
            )
        )
    if labelled:
        findings += check_labels(table, batch)
    image_findings, images = check_images(table, batch)
    return findings + image_findings, None if findings or image_findings else images


def check_labels(table, batch: str) -> list[Finding]:
    column = table.column(LABEL)
    if column.null_count:
        rows = np.flatnonzero(np.asarray(column.is_null()))
        return [
            Finding(
                "LABEL_NULL",
                "error",
                batch,
                f"{column.null_count} label(s) are null",
                column.null_count,
                _ids(table, rows),
            )
        ]
    if pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False)
        nan_rows = np.flatnonzero(~np.isfinite(values))
        if nan_rows.size:
            return [
                Finding(
                    "LABEL_NAN",
                    "error",
                    batch,
                    f"{nan_rows.size} label(s) are NaN or Inf",
                    int(nan_rows.size),
                    _ids(table, nan_rows),
                )
            ]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return []
    if not pa.types.is_integer(column.type):
        return [
            Finding(
                "LABEL_DTYPE",
                "error",
                batch,
                f"label column has type {column.type}; expected integer or string",
                len(column),
            )
        ]
    labels = column.to_numpy(zero_copy_only=False)
    negative = np.flatnonzero(labels < 0)
    if negative.size:
        return [
            Finding(
                "LABEL_DOMAIN",
                "error",
                batch,
                f"{negative.size} label(s) are negative",
                int(negative.size),
                sorted(set(labels[negative].tolist()))[:5],
            )
        ]
    return []


BUCKETS = 10_000  # split buckets of the stable id hash: shares are kept to 1/10,000


def bucket_cut(share: float) -> int:
    """The bucket below which an id falls in a ``share`` of all ids (test, replay, validation)."""
    return int(round(share * BUCKETS))


def stable_bucket(example_id: str, buckets: int = BUCKETS) -> int:
    """A split bucket that depends only on the example id, so an example never changes split."""
    return int(stable_buckets([example_id], buckets=buckets)[0])


def stable_buckets(example_ids: list[str], salt: str = "", buckets: int = BUCKETS) -> np.ndarray:
    """``stable_bucket(salt + id)`` of every id."""
    return buckets_of(id_hashes(example_ids, salt), buckets)


def buckets_of(hashes: np.ndarray, buckets: int = BUCKETS) -> np.ndarray:
    """Split buckets of id hashes: the hash modulo ``buckets``."""
    return (hashes % np.uint64(buckets)).astype(np.int64)


def id_hashes(example_ids: list[str], salt: str = "") -> np.ndarray:
    """The first 8 bytes of sha256(salt + id), big-endian, of every id, in one loop (ingest hashes
    every row it reads, for its split and its duplicate check)."""
    sha256 = hashlib.sha256
    heads = b"".join([sha256((salt + i).encode()).digest()[:8] for i in example_ids])
    return np.frombuffer(heads, ">u8").astype(np.uint64)


def is_test_example(example_id: str, test_fraction: float) -> bool:
    return stable_bucket(example_id) < bucket_cut(test_fraction)
