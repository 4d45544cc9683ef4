"""`ctp data import`: your own images -> one new labelled batch (``datasets/<name>/batch=<id>/``).

Sources: a folder or ``s3://bucket/prefix`` in torchvision ImageFolder layout (one folder per
class), or a CSV/Parquet manifest of ``path,label[,id]`` (paths relative to the manifest's folder,
absolute, or ``s3://``). Ids are the sha256 of each file's bytes (the first ID_HEX hex digits)
unless the manifest gives them; files whose id is already in one of the dataset's batches are
skipped, so a rerun writes nothing.

Nothing half-written: rows stream, ROW_GROUP rows at a time, into Parquet part files in a local
temp dir (bounded memory); every problem becomes a coded Finding and all of them are reported
together; only when there are none are the parts uploaded, into a batch id no one has used.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components._shared.dataset import ID, IMAGE, LABEL, MAX_IMAGE_PIXELS, Finding, list_batches
from components._shared.errors import AlreadyExists, ConfigError, CtpError, DataValidationError
from components._shared.store import Store, open_store

ID_HEX = 32  # 128 bits of sha256: collisions are out of reach for any dataset
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")  # torchvision's
KEPT_FORMATS = ("PNG", "JPEG")  # stored as they are; other formats are re-encoded as PNG
ROW_GROUP = 512  # rows held in memory at once
ROWS_PER_PART = 50_000  # rows per part file
MANIFEST_SUFFIXES = (".csv", ".parquet")
SCHEMA = pa.schema([pa.field(ID, pa.string()), pa.field(IMAGE, pa.binary()), pa.field(LABEL, pa.string())])

# Finding codes
UNREADABLE, UNSUPPORTED, SIZE_MIXED, CLASS_EMPTY = (
    "IMPORT_UNREADABLE",
    "IMPORT_FORMAT_UNSUPPORTED",
    "IMPORT_SIZE_MIXED",
    "IMPORT_CLASS_EMPTY",
)
MANIFEST_INVALID, SOURCE_EMPTY = "IMPORT_MANIFEST_INVALID", "IMPORT_SOURCE_EMPTY"


def parse_resize(value: str) -> tuple[int, int] | None:
    """``none`` -> None; ``WxH`` -> (W, H)."""
    if value.strip().lower() == "none":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ConfigError(f"--resize {value!r} is not none or WxH", hint="e.g. --resize 64x64")
    return int(match[1]), int(match[2])


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    dataset: str
    resize: tuple[int, int] | None = None  # (W, H); None: every image must already have one size
    rows_per_part: int = ROWS_PER_PART
    progress: bool = True

    def __post_init__(self):
        if self.rows_per_part < 1:
            raise ConfigError("rows_per_part must be at least 1")


@dataclasses.dataclass
class ImportResult:
    source: str
    batch: str | None  # None: nothing new
    keys: list[str]
    seen: int
    imported: int
    skipped: int  # already imported (or a repeat of a file earlier in this import)
    per_class: dict[str, int]
    image_shape: tuple[int, int, int] | None

    def summary(self) -> str:
        classes = ", ".join(f"{name} {n}" for name, n in sorted(self.per_class.items())) or "none"
        where = f"wrote batch={self.batch} ({len(self.keys)} part file(s))" if self.batch else "no new batch written"
        shape = f", images {'x'.join(map(str, self.image_shape))} (HxWxC)" if self.image_shape else ""
        return (
            f"{self.source}: {self.seen} file(s) seen, {self.imported} imported, {self.skipped} skipped as already "
            f"imported; {where}{shape}. Imported per class: {classes}."
        )


@dataclasses.dataclass(frozen=True)
class _Entry:
    where: str  # as the user would name it, for findings
    label: str
    read: Callable[[], bytes]
    id: str | None = None


class _Findings:
    """Findings grouped by code (one line each, with a count and up to 5 examples)."""

    def __init__(self):
        self.by_code: dict[str, Finding] = {}

    def add(self, code: str, where: str, message: str) -> None:
        finding = self.by_code.get(code)
        if finding is None:
            self.by_code[code] = Finding(code, "error", where, message, 1, [where])
            return
        finding.count += 1
        if len(finding.examples) < 5:
            finding.examples.append(where)

    def all(self) -> list[Finding]:
        return list(self.by_code.values())


def report(findings: list[Finding]) -> str:
    """Every finding, one line each: code, count, message, examples."""
    lines = [f"{len(findings)} problem(s); nothing was written:"]
    for f in findings:
        lines.append(f"  {f.code} ({f.count}): {f.message}; e.g. {', '.join(map(str, f.examples))}")
    return "\n".join(lines)


# -- sources -----------------------------------------------------------------------------------


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, rest = uri[len("s3://") :].partition("/")
    return bucket, rest.strip("/")


def _s3_reader(uri: str, stores: dict) -> Callable[[], bytes]:
    bucket, key = _split_s3(uri)
    folder, _, name = key.rpartition("/")
    root = f"s3://{bucket}/{folder}"
    if root not in stores:
        stores[root] = open_store(root)
    store = stores[root]
    return lambda: store.get_bytes(name)


def _local_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _image_folder(src: str, findings: _Findings) -> Iterator[_Entry]:
    """(class folder, file) pairs of an ImageFolder tree, classes and files in sorted order."""
    files: dict[str, list[tuple[str, Callable[[], bytes]]]] = collections.defaultdict(list)
    classes: set[str] = set()
    if src.startswith("s3://"):
        store = open_store(src.rstrip("/"))
        for key in store.list(""):
            parts = key.split("/")
            if len(parts) >= 2:
                files[parts[0]].append((key, (lambda k=key: store.get_bytes(k))))
        classes = set(files)
    else:
        root = Path(src)
        if not root.is_dir():
            raise ConfigError(f"{src} is not a folder, a manifest (.csv, .parquet) or an s3:// prefix")
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            classes.add(folder.name)
            for dirpath, dirnames, names in os.walk(folder):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in names:
                    if not name.startswith("."):
                        path = Path(dirpath) / name
                        files[folder.name].append((str(path.relative_to(root)), _local_reader(path)))
    if not classes:
        findings.add(SOURCE_EMPTY, src, "no class folders (ImageFolder layout: <src>/<class>/<image>)")
    for label in sorted(classes):
        members = sorted(files[label], key=lambda item: item[0])
        if not any(_supported(where) for where, _ in members):
            findings.add(CLASS_EMPTY, label, "class folder(s) with no image files")
        for where, read in members:
            yield _Entry(where, label, read)


def _manifest(src: str, findings: _Findings) -> Iterator[_Entry]:
    stores: dict = {}
    if src.startswith("s3://"):
        data = _s3_reader(src, stores)()
        bucket, key = _split_s3(src)
        base = f"s3://{bucket}/{key.rpartition('/')[0]}".rstrip("/")
    else:
        path = Path(src)
        data = path.read_bytes()
        base = str(path.resolve().parent)
    try:
        if src.endswith(".csv"):
            import pyarrow.csv as pacsv

            types = {LABEL: pa.string(), ID: pa.string()}
            table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types=types))
        else:
            table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as err:
        findings.add(MANIFEST_INVALID, src, f"not a readable manifest ({str(err)[:120]})")
        return
    missing = [c for c in ("path", LABEL) if c not in table.column_names]
    if missing:
        findings.add(MANIFEST_INVALID, src, f"manifest lacks column(s) {', '.join(missing)} (need path,label[,id])")
        return
    if not table.num_rows:
        findings.add(SOURCE_EMPTY, src, "manifest has no rows")
    labels_seen: collections.Counter = collections.Counter()
    ids = table.column(ID).to_pylist() if ID in table.column_names else [None] * table.num_rows
    for row, (path, label, given) in enumerate(
        zip(table.column("path").to_pylist(), table.column(LABEL).to_pylist(), ids, strict=True)
    ):
        if not path or label is None or str(label) == "":
            findings.add(MANIFEST_INVALID, f"row {row + 1}", "row with an empty path or label")
            continue
        labels_seen[str(label)] += 1
        path = str(path)
        if path.startswith("s3://"):
            read = _s3_reader(path, stores)
        elif base.startswith("s3://"):
            read = _s3_reader(f"{base}/{path}", stores)
        else:
            read = _local_reader(Path(path) if os.path.isabs(path) else Path(base) / path)
        yield _Entry(path, str(label), read, None if given in (None, "") else str(given))


def _entries(src: str, findings: _Findings) -> list[_Entry]:
    if src.lower().endswith(MANIFEST_SUFFIXES):
        return list(_manifest(src, findings))
    return list(_image_folder(src, findings))


def _supported(where: str) -> bool:
    return where.lower().endswith(IMAGE_EXTENSIONS)


# -- images ------------------------------------------------------------------------------------


def _prepare(data: bytes, resize: tuple[int, int] | None) -> tuple[bytes, tuple[int, int, int]]:
    """Check the image opens and decodes; return the bytes to store (PNG/JPEG) and its H,W,C."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # structure: truncated or corrupt files fail here
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{img.width}x{img.height} exceeds {MAX_IMAGE_PIXELS} pixels")
        fmt = img.format
        img.load()  # the pixels decode
        channels = 1 if img.mode in ("L", "P", "1", "I", "F") else 3
        if resize is None and fmt in KEPT_FORMATS:
            return data, (img.height, img.width, channels)
        out = img.convert("L" if channels == 1 else "RGB")
        if resize is not None and out.size != resize:
            out = out.resize(resize, Image.Resampling.BILINEAR)
        sink = io.BytesIO()
        out.save(sink, format="PNG")
        return sink.getvalue(), (out.height, out.width, channels)


def imported_ids(store: Store, dataset: str) -> set[str]:
    """Ids in the dataset's batches (the id column only)."""
    filesystem = store.arrow_filesystem()
    ids: set[str] = set()
    for keys in list_batches(store, dataset).values():
        for key in keys:
            with filesystem.open_input_file(key) as handle:
                ids.update(str(i) for i in pq.read_table(handle, columns=[ID]).column(ID).to_pylist())
    return ids


def import_record_key(dataset: str, batch: str) -> str:
    """The import's claim on its batch id (create-only) and, once the parts are up, its record."""
    return f"datasets/{dataset}/imports/batch={batch}.json"


def next_batch_id(store: Store, dataset: str) -> str:
    """After every batch there is and every batch id an import has claimed."""
    existing = list(list_batches(store, dataset))
    claimed = store.list(f"datasets/{dataset}/imports/")
    existing += [k.rsplit("/", 1)[-1][len("batch=") : -len(".json")] for k in claimed if k.endswith(".json")]
    if all(b.isdigit() for b in existing):
        return f"{max((int(b) for b in existing), default=-1) + 1:04d}"
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def claim_batch(store: Store, dataset: str, record: dict) -> str:
    """A batch id no other import (concurrent or earlier) uses: a create-only claim under imports/."""
    for _ in range(100):
        batch = next_batch_id(store, dataset)
        try:
            store.put_json(import_record_key(dataset, batch), {**record, "state": "writing"}, create_only=True)
            return batch
        except AlreadyExists:
            continue
    raise ConfigError(f"could not claim a batch id under datasets/{dataset}/ after 100 tries")


class _Parts:
    """Rows -> local Parquet part files, a row group at a time."""

    def __init__(self, folder: Path, rows_per_part: int):
        self.folder, self.rows_per_part = folder, rows_per_part
        self.paths: list[Path] = []
        self.rows: list[tuple[str, bytes, str]] = []
        self.writer: pq.ParquetWriter | None = None
        self.in_part = 0

    def add(self, row: tuple[str, bytes, str]) -> None:
        self.rows.append(row)
        if len(self.rows) >= min(ROW_GROUP, self.rows_per_part - self.in_part):
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        if self.writer is None:
            self.paths.append(self.folder / f"part-{len(self.paths):05d}.parquet")
            self.writer = pq.ParquetWriter(self.paths[-1], SCHEMA)
        ids, images, labels = zip(*self.rows, strict=True)
        self.writer.write_table(
            pa.Table.from_arrays([pa.array(ids), pa.array(images, pa.binary()), pa.array(labels)], schema=SCHEMA)
        )
        self.in_part += len(self.rows)
        self.rows = []
        if self.in_part >= self.rows_per_part:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.in_part = None, 0


def import_images(store: Store, src: str, config: ImportConfig) -> ImportResult:
    """Import ``src`` into one new batch of ``config.dataset``; raises DataValidationError listing
    every finding (and writes nothing) when any file or class is unusable."""
    from tqdm import tqdm

    findings = _Findings()
    entries = _entries(src, findings)
    known = imported_ids(store, config.dataset)
    per_class: collections.Counter = collections.Counter()
    shapes: dict[tuple[int, int, int], list[str]] = {}
    seen_now: set[str] = set()
    skipped = 0
    with tempfile.TemporaryDirectory(prefix="ctp-import-") as tmp:
        parts = _Parts(Path(tmp), config.rows_per_part)
        for entry in tqdm(entries, desc="import", unit="file", disable=not config.progress):
            if not _supported(entry.where):
                findings.add(UNSUPPORTED, entry.where, f"not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
                continue
            try:
                data = entry.read()
            except (OSError, CtpError) as err:
                findings.add(UNREADABLE, entry.where, f"cannot be read ({str(err)[:120]})")
                continue
            example_id = entry.id or hashlib.sha256(data).hexdigest()[:ID_HEX]
            if example_id in known or example_id in seen_now:
                skipped += 1
                continue
            seen_now.add(example_id)
            try:
                image, shape = _prepare(data, config.resize)
            except Exception as err:  # Pillow raises many types for a bad file: each is a finding here
                findings.add(UNREADABLE, entry.where, f"cannot be decoded as an image ({str(err)[:120]})")
                continue
            shapes.setdefault(shape, []).append(entry.where)
            per_class[entry.label] += 1
            if not findings.by_code:  # after the first problem, keep checking but stop writing
                parts.add((example_id, image, entry.label))
        parts.flush()
        parts.close()
        if len(shapes) > 1:
            common = max(shapes, key=lambda s: len(shapes[s]))
            odd = [w for s, ws in shapes.items() if s != common for w in ws]
            named = ", ".join(f"{'x'.join(map(str, s))} ({len(ws)})" for s, ws in shapes.items())
            findings.by_code[SIZE_MIXED] = Finding(
                SIZE_MIXED,
                "error",
                odd[0],
                f"images differ in size (HxWxC: {named}); pass --resize WxH to resize them all",
                len(odd),
                odd[:5],
            )
        if findings.by_code:
            found = findings.all()
            raise DataValidationError(report(found), code=found[0].code, hint="fix the source, then re-run")
        if not parts.paths:
            return ImportResult(src, None, [], len(entries), 0, skipped, {}, None)
        record = {"source": src, "created_at": dt.datetime.now(dt.UTC).isoformat(), "per_class": dict(per_class)}
        batch = claim_batch(store, config.dataset, record)
        keys: list[str] = []
        try:
            for path in parts.paths:
                key = f"datasets/{config.dataset}/batch={batch}/{path.name}"
                store.put_file(key, path)
                keys.append(key)
        except BaseException:  # a failed upload takes the parts already up back down
            for key in [*keys, import_record_key(config.dataset, batch)]:
                with contextlib.suppress(Exception):  # the upload's error is the one to report
                    store.delete(key)
            raise
        record.update(state="done", batch=batch, keys=keys, imported=sum(per_class.values()), skipped=skipped)
        store.put_json(import_record_key(config.dataset, batch), record)
    shape = next(iter(shapes))
    return ImportResult(src, batch, keys, len(entries), sum(per_class.values()), skipped, dict(per_class), shape)
