"""Hostile input, property-based (hypothesis, derandomized: the same cases on every run).

- malformed batches (random columns and dtypes, nulls, NaN, huge or nonsense declared image
  shapes, truncated or non-image bytes, truncated or non-Parquet files) through ingest;
- hostile object keys (``../``, leading ``/``, NUL, very long, unicode) through every store
  operation and through the registry's names.

Every outcome is a success or a CtpError whose code is documented in the README; nothing is
written outside the store; no model is ever trained or promoted.
"""

from __future__ import annotations

import collections
import io
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from components._shared.dataset import SHAPE_KEY
from components._shared.errors import CtpError
from components._shared.registry import Registry
from components._shared.store import LocalStore, read_parquet
from components.ingest.config import IngestConfig
from components.ingest.core import ingest

ROOT = Path(__file__).resolve().parents[2]
BATCH_CASES, KEY_CASES, NAME_CASES = 300, 250, 100
CODES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # suite -> code -> count
SETTINGS = dict(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


def _documented_codes() -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "README.md").read_text()))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A sentinel directory: stores live in sandbox/work/, and nothing may appear anywhere else."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "sentinel.txt").write_text("untouched")
    (root / "work").mkdir()
    yield root
    assert sorted(p.name for p in root.iterdir()) == ["sentinel.txt", "work"]
    assert (root / "sentinel.txt").read_text() == "untouched"


def _outcome(suite: str, action) -> object:
    try:
        result = action()
    except CtpError as err:
        CODES[suite][err.code] += 1
        return err
    CODES[suite]["ok"] += 1
    return result


# --- malformed batches through ingest ------------------------------------------------------------


def _png(h: int, w: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (w, h), 128).save(buffer, format="PNG")
    return buffer.getvalue()


_GOOD_PNG = _png(8, 8, "L")
image_bytes = st.one_of(
    st.just(_GOOD_PNG),
    st.builds(_png, st.integers(1, 12), st.integers(1, 12), st.sampled_from(["L", "RGB", "RGBA", "P"])),
    st.integers(1, len(_GOOD_PNG) - 1).map(lambda n: _GOOD_PNG[:n]),  # truncated
    st.binary(max_size=64),  # not an image (or empty)
    st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32),  # a PNG signature with garbage after it
    st.none(),
)
declared_shapes = st.one_of(
    st.tuples(st.integers(1, 10), st.integers(1, 10), st.sampled_from([1, 3])).map(lambda s: ",".join(map(str, s))),
    st.sampled_from(
        [
            "100000,100000,3",
            "4096,4096,4",
            "0,8,1",
            "-8,8,1",
            "8,8",
            "8,8,1,1",
            "a,b,c",
            "",
            "8,,1",
            "99999999999999999999,1,1",
        ]
    ),
    st.text(max_size=12),
)


@st.composite
def image_columns(draw, n: int):
    kind = draw(st.sampled_from(["bytes", "list", "fixed_binary", "float_list", "string", "int"]))
    if kind == "bytes":
        return pa.array(draw(st.lists(image_bytes, min_size=n, max_size=n)), pa.binary()), {}
    if kind == "string":
        return pa.array(["not an image"] * n), {}
    if kind == "int":
        return pa.array(range(n), pa.int64()), {}
    shape = draw(declared_shapes)
    meta = {SHAPE_KEY: shape.encode()} if draw(st.booleans()) else {}
    size = draw(st.sampled_from([64, 63, 192, 1]))
    if kind == "fixed_binary":
        return pa.array([bytes(size)] * n, pa.binary(size)), meta
    values = draw(st.sampled_from([0.0, np.nan, np.inf, -1.0, 300.0, 7.0]))
    dtype = pa.float32() if kind == "float_list" else pa.uint8()
    flat = np.full(n * size, 0 if dtype == pa.uint8() else values)
    array = pa.FixedSizeListArray.from_arrays(pa.array(flat, dtype), size) if n else pa.array([], pa.list_(dtype, size))
    return array, meta


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


label_columns = st.sampled_from(["int", "negative", "float_nan", "float", "string", "null", "bool"])


def _labels(kind: str, n: int) -> pa.Array:
    return {
        "int": lambda: pa.array([i % 3 for i in range(n)], pa.int64()),
        "negative": lambda: pa.array([-1] * n, pa.int64()),
        "float_nan": lambda: pa.array([np.nan] * n, pa.float64()),
        "float": lambda: pa.array([0.5] * n, pa.float64()),
        "string": lambda: pa.array([f"class-{i % 2}" for i in range(n)]),
        "null": lambda: pa.array([None] * n, pa.int64()),
        "bool": lambda: pa.array([True] * n),
    }[kind]()


def _clean_batch(n: int) -> pa.Table:
    return pa.table(
        {
            "id": [f"c-{i}" for i in range(n)],
            "image": pa.array([_GOOD_PNG] * n, pa.binary()),
            "label": pa.array([i % 3 for i in range(n)], pa.int64()),
        }
    )


@st.composite
def batches(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # now and then a valid batch: the oracle must not be "always fails"
        return _parquet(_clean_batch(draw(st.integers(1, 6))))
    n = draw(st.integers(0, 6))
    columns, fields = [], []
    if draw(st.integers(0, 9)):  # mostly present
        ids = draw(st.sampled_from([[f"x-{i}" for i in range(n)], [None] * n, ["same"] * n]))
        columns.append(pa.array(ids, pa.string()))
        fields.append(pa.field("id", pa.string()))
    if draw(st.integers(0, 9)):
        array, meta = draw(image_columns(n))
        columns.append(array)
        fields.append(pa.field("image", array.type, metadata=meta or None))
    if draw(st.integers(0, 9)):
        array = _labels(draw(label_columns), n)
        columns.append(array)
        fields.append(pa.field("label", array.type))
    if draw(st.booleans()):
        columns.append(pa.array([0] * n))
        fields.append(pa.field("extra", pa.int64()))
    data = _parquet(pa.Table.from_arrays(columns, schema=pa.schema(fields)))
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "garbage", "empty"]))
    if damage == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if damage == "garbage":
        return draw(st.binary(min_size=1, max_size=200))
    return b"" if damage == "empty" else data


@settings(max_examples=BATCH_CASES, **SETTINGS)
@given(payloads=st.lists(batches(), min_size=1, max_size=2))
def test_malformed_batches_through_ingest(sandbox, payloads):
    work = Path(tempfile.mkdtemp(dir=sandbox / "work"))
    try:
        store = LocalStore(work / "store")
        for i, data in enumerate(payloads):
            store.put_bytes(f"datasets/digits/batch={i:04d}/part-0.parquet", data)
        outcome = _outcome("batches", lambda: ingest(store, IngestConfig()))
        if isinstance(outcome, CtpError):  # a failed ingest publishes no snapshot
            assert not [k for k in store.list("snapshots/") if k.endswith("manifest.json")]
        assert store.list("models/") == []  # nothing trained or promoted
        assert {p.name for p in work.iterdir()} == {"store"}
    finally:
        shutil.rmtree(work)


# --- hostile object keys through the store -------------------------------------------------------

_PIECES = [
    "..",
    ".",
    "",
    "/",
    "\\",
    "\x00",
    "a",
    "models",
    "x" * 300,
    "é",
    "名",
    "\u202e",
    " ",
    "\n",
    "%2e%2e",
    "~",
    "$HOME",
    "C:",
    "..\\..",
    ".locks",
    ".tmp-x",
    "batch=1",
    "ok.json",
]
hostile_keys = st.one_of(
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6).map("/".join),
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4).map("".join),
    st.text(max_size=40),
    st.integers(1000, 1100).map(lambda n: "a/" * (n // 2)),  # very long
)


def _key_operations(store: LocalStore, key: str, src: Path, dest: Path):
    yield lambda: store.put_bytes(key, b"x")
    yield lambda: store.put_bytes(key, b"x", create_only=True)
    yield lambda: store.get_bytes(key)
    yield lambda: store.compare_and_swap(key, b"y", None)
    yield lambda: store.exists(key)
    yield lambda: store.delete(key)
    yield lambda: store.list(key)
    yield lambda: store.put_file(key, src)
    yield lambda: store.get_file(key, dest)
    yield lambda: read_parquet(store, key)
    yield lambda: store.arrow_filesystem().open_output_stream(key).close()


@settings(max_examples=KEY_CASES, **SETTINGS)
@given(key=hostile_keys)
def test_hostile_keys_through_every_store_operation(sandbox, key):
    work = Path(tempfile.mkdtemp(dir=sandbox / "work"))
    try:
        store = LocalStore(work / "store")
        src = work / "payload.bin"
        src.write_bytes(b"payload")
        for operation in _key_operations(store, key, src, work / "store" / "fetched.bin"):
            _outcome("keys", operation)
        assert {p.name for p in work.iterdir()} <= {"store", "payload.bin"}
    finally:
        shutil.rmtree(work)


@settings(max_examples=NAME_CASES, **SETTINGS)
@given(name=hostile_keys, what=st.sampled_from(["model", "version", "alias"]))
def test_hostile_registry_names(sandbox, name, what):
    work = Path(tempfile.mkdtemp(dir=sandbox / "work"))
    try:
        store = LocalStore(work / "store")
        weights = work / "model.safetensors"
        weights.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")

        def act():
            registry = Registry(store, name if what == "model" else "digits")
            version = name if what == "version" else "v1"
            registry.publish(version, {"model.safetensors": weights}, {})
            registry.move_alias(name if what == "alias" else "champion", version, None)

        _outcome("names", act)
        assert all(k.startswith("models/") for k in store.list(""))
        assert {p.name for p in work.iterdir()} == {"store", "model.safetensors"}
    finally:
        shutil.rmtree(work)


def test_every_code_seen_is_documented():
    """Runs after the property tests (file order): every code they produced is in the README."""
    seen = {code for counter in CODES.values() for code in counter if code != "ok"}
    total = sum(sum(counter.values()) for counter in CODES.values())
    print(f"\nhostile inputs: { {suite: dict(counter) for suite, counter in CODES.items()} } total={total}")
    assert total >= BATCH_CASES + KEY_CASES * 11 + NAME_CASES
    assert len(seen) >= 8  # the inputs really were hostile in many ways
    assert all(CODES[suite]["ok"] > 0 for suite in ("batches", "keys", "names"))  # and valid ones still pass
    assert seen <= _documented_codes(), seen - _documented_codes()
