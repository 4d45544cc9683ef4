"""Every data check on real Parquet files: each gives its code, severity, batch, count and
examples; ingest reports all bad batches at once; a failed check never touches the champion."""

import io

import numpy as np
import pyarrow as pa
import pytest
from kfp import dsl

from components._shared.dataset import ID, IMAGE, LABEL, SHAPE_KEY
from components._shared.errors import DataValidationError
from components._shared.model.inputs import pixel_features
from components._shared.registry import CHAMPION, Registry, new_version_id
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.snapshot import data_contract, load_split, read_manifest
from components._shared.store import parquet_bytes
from components.ingest import core as ingest_core
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.validate_data.config import ValidateConfig
from components.validate_data.core import check_snapshot, load_champion, validate
from tests.helpers import digits_table, ingest_inputs, write_batch


def publish_champion(store, tmp_path, fingerprint: str, model: str = "digits") -> str:
    """A real registered champion for the data in ``fingerprint``: its card's data section and
    a reference sample (no weights: these runs stop before anything would load them)."""
    manifest = read_manifest(store, fingerprint)
    train = load_split(store, fingerprint, "train", manifest)
    reference = tmp_path / "reference.npy"
    np.save(reference, pixel_features(train.images[:400]), allow_pickle=False)
    version = new_version_id()
    registry = Registry(store, model)
    registry.publish(
        version,
        {"reference.npy": reference},
        {"data": {"fingerprint": fingerprint, "batches": sorted(manifest["batches"]), **data_contract(manifest)}},
    )
    assert registry.promote(version, registry.alias(CHAMPION), run_id="test-setup", reason="test champion")
    return version


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_table(n: int, shape=(8, 8), *, bad_rows=(), labels=None, prefix: str = "p") -> pa.Table:
    rng = np.random.default_rng(0)
    images = [png_bytes(rng.integers(0, 255, shape, dtype=np.uint8)) for _ in range(n)]
    for row in bad_rows:
        images[row] = b"\x89PNG not really"
    labels = [i % 3 for i in range(n)] if labels is None else labels
    return pa.table({ID: [f"{prefix}{i}" for i in range(n)], IMAGE: pa.array(images, pa.binary()), LABEL: labels})


def ingest_error(store, **config) -> DataValidationError:
    with pytest.raises(DataValidationError) as err:
        ingest(store, IngestConfig(**config))
    assert store.list("snapshots/") == []  # nothing half-published
    return err.value


def test_zero_byte_file_is_named(local_store):
    write_batch(local_store, digits_table(40), "0000")
    local_store.put_bytes("datasets/digits/batch=0001/part-0.parquet", b"")
    err = ingest_error(local_store)
    assert err.code == "PARQUET_EMPTY_FILE" and "batch=0001" in err.one_line()


def test_truncated_file_is_named(store):
    write_batch(store, digits_table(40), "0000")
    store.put_bytes("datasets/digits/batch=0001/part-0.parquet", parquet_bytes(digits_table(30))[:-40])
    err = ingest_error(store)
    assert err.code == "PARQUET_CORRUPT" and "batch=0001" in err.one_line()


def test_undecodable_images_are_counted_with_example_ids(local_store):
    write_batch(local_store, png_table(30), "0000")
    write_batch(local_store, png_table(30, bad_rows=(3, 17)), "0001")
    err = ingest_error(local_store)
    assert err.code == "IMAGE_UNDECODABLE"
    assert err.message.startswith("batch=0001: 2 image(s) cannot be decoded")


def test_nan_in_array_images_is_named(local_store):
    pixels = np.full((30, 64), 10.0)
    pixels[[4, 9], 5] = np.nan
    field = pa.field(IMAGE, pa.list_(pa.float64(), 64), metadata={SHAPE_KEY: b"8,8,1"})
    table = pa.Table.from_arrays(
        [
            pa.array([f"n{i}" for i in range(30)]),
            pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), 64),
            pa.array([1] * 30),
        ],
        schema=pa.schema([pa.field(ID, pa.string()), field, pa.field(LABEL, pa.int64())]),
    )
    write_batch(local_store, digits_table(40), "0000")
    write_batch(local_store, table, "0001")
    err = ingest_error(local_store)
    assert err.code == "IMAGE_NAN" and "2 image(s) contain NaN" in err.message


def test_every_bad_batch_is_named_in_one_error(local_store):
    write_batch(local_store, digits_table(40), "0000")
    local_store.put_bytes("datasets/digits/batch=0001/part-0.parquet", b"")
    write_batch(local_store, digits_table(30, prefix="b").drop_columns([LABEL]), "0002")
    write_batch(local_store, png_table(30, bad_rows=(0,)), "0003")
    line = ingest_error(local_store).one_line()
    assert line.startswith("PARQUET_EMPTY_FILE: batch=0001")
    assert "+2 more: MISSING_COLUMN batch=0002, IMAGE_UNDECODABLE batch=0003" in line
    assert "\n" not in line


def test_findings_of_one_batch_add_up_across_record_batches(local_store, monkeypatch):
    monkeypatch.setattr(ingest_core, "READ_ROWS", 16)  # 50 rows -> 4 record batches
    labels = pa.array([float(i % 10) if i % 7 else float("nan") for i in range(50)])
    write_batch(local_store, digits_table(50).set_column(2, LABEL, labels), "0000")
    err = ingest_error(local_store)
    nan_rows = sum(1 for i in range(50) if i % 7 == 0)
    assert err.code == "LABEL_NAN" and err.message == f"batch=0000: {nan_rows} label(s) are NaN or Inf"


def test_duplicates_warn_with_examples_and_reach_the_report(local_store):
    write_batch(local_store, digits_table(60, prefix="a"), "0000")
    write_batch(local_store, digits_table(30, offset=60, prefix="a"), "0001")  # ids a-0..a-29 again
    result = ingest(local_store, IngestConfig())
    report = validate(local_store, result.fingerprint, ValidateConfig()).report
    (finding,) = [f for f in report["findings"] if f["code"] == "DUPLICATE_ID"]
    assert finding["severity"] == "warning" and finding["batch"] == "0001"
    assert finding["count"] == 30 and finding["examples"] == [f"a-{i}" for i in range(5)]
    assert report["status"] == "pass"


def test_row_count_bounds(local_store):
    write_batch(local_store, digits_table(40), "0000")
    manifest = read_manifest(local_store, ingest(local_store, IngestConfig()).fingerprint)
    rows = manifest["objects"]["train.parquet"]["rows"]
    assert not check_snapshot(manifest, None, ValidateConfig(min_train_rows=rows, max_train_rows=rows))
    too_few = check_snapshot(manifest, None, ValidateConfig(min_train_rows=rows + 1))
    too_many = check_snapshot(manifest, None, ValidateConfig(max_train_rows=rows - 1))
    for findings, bound in ((too_few, "need at least"), (too_many, "expected at most")):
        assert [(f.code, f.severity, f.count) for f in findings] == [("ROW_COUNT", "error", rows)]
        assert bound in findings[0].message


def test_new_label_is_an_error_unless_allowed(local_store, tmp_path):
    seed_digits(local_store, SeedConfig(batches=1))
    publish_champion(local_store, tmp_path, ingest(local_store, IngestConfig()).fingerprint)
    write_batch(local_store, digits_table(40, prefix="n", labels=np.array([10] * 3 + [1] * 37)), "0001")
    manifest = read_manifest(local_store, ingest(local_store, IngestConfig()).fingerprint)
    champion = load_champion(local_store, "digits")
    (finding,) = check_snapshot(manifest, champion, ValidateConfig())
    assert (finding.code, finding.severity, finding.batch, finding.count, finding.examples) == (
        "LABEL_NEW_CLASS",
        "error",
        "0001",
        3,
        [10],
    )
    (allowed,) = check_snapshot(manifest, champion, ValidateConfig(allow_new_classes=True))
    assert allowed.severity == "warning"


def test_string_labels_map_to_stable_class_indices(local_store):
    write_batch(local_store, png_table(30, labels=["cat", "dog", "ant"] * 10), "0000")
    first = ingest(local_store, IngestConfig())
    write_batch(local_store, png_table(30, labels=["bee", "cat"] * 15), "0001")
    second = ingest(local_store, IngestConfig())
    assert first.label_names == ["ant", "cat", "dog"] and first.classes == [0, 1, 2]
    assert second.label_names == ["ant", "cat", "dog", "bee"]  # earlier classes keep their index
    split = load_split(local_store, second.fingerprint, "train")
    names = np.array(second.label_names)[split.labels]
    expected = dict(zip([f"p{i}" for i in range(30)], ["cat", "dog", "ant"] * 10))
    assert all(names[k] == expected[i] for k, (i, b) in enumerate(zip(split.ids, split.batches)) if b == "0000")


def test_mixed_label_types_are_an_error(local_store):
    write_batch(local_store, digits_table(40), "0000")
    write_batch(local_store, png_table(30, labels=["a"] * 30), "0001")
    assert ingest_error(local_store).code == "LABEL_DTYPE"


def test_any_height_width_channels(local_store):
    rng = np.random.default_rng(1)
    images = [png_bytes(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)) for _ in range(30)]
    write_batch(
        local_store,
        pa.table(
            {ID: [f"r{i}" for i in range(30)], IMAGE: pa.array(images, pa.binary()), LABEL: [i % 2 for i in range(30)]}
        ),
        "0000",
    )
    result = ingest(local_store, IngestConfig())
    split = load_split(local_store, result.fingerprint, "train")
    assert result.image_shape == [12, 20, 3] and split.images.shape[1:] == (12, 20, 3)


# --- a bad batch stops the run before training; the champion is untouched ----------------------


def _artifact(cls, tmp_path, name):
    return cls(name=name, uri=str(tmp_path / name), metadata={})


@pytest.mark.parametrize(
    "step, bad, code",
    [
        ("ingest", lambda s: s.put_bytes("datasets/digits/batch=0099/part-0.parquet", b""), "PARQUET_EMPTY_FILE"),
        ("ingest", lambda s: write_batch(s, png_table(30, bad_rows=(2,)), "0099"), "IMAGE_UNDECODABLE"),
        (
            "validate-data",
            lambda s: write_batch(s, digits_table(40, prefix="n", labels=np.full(40, 11)), "0099"),
            "LABEL_NEW_CLASS",
        ),
    ],
)
def test_bad_data_stops_the_steps_before_train_and_keeps_the_champion(local_store, tmp_path, step, bad, code):
    from components._shared.runtime import recorded_error
    from components.ingest.component import ingest as ingest_step
    from components.validate_data.component import validate_data as validate_step

    seed_digits(local_store, SeedConfig(batches=1))
    champion = publish_champion(local_store, tmp_path, ingest(local_store, IngestConfig()).fingerprint)
    before = Registry(local_store, "digits").alias(CHAMPION)
    bad(local_store)
    snapshot = _artifact(dsl.Dataset, tmp_path, "snapshot")
    with pytest.raises(DataValidationError) as err:
        run_id = ingest_step.python_func(
            **ingest_inputs(local_store.uri, run_id="r1", job_id=""),
            snapshot=snapshot,
        )
        validate_step.python_func(
            store_uri=local_store.uri,
            model_name="digits",
            allow_new_classes=False,
            run_id=run_id,
            snapshot=snapshot,
            report=_artifact(dsl.Artifact, tmp_path, "report"),
            report_markdown=_artifact(dsl.Markdown, tmp_path, "md"),
            drift_plot=_artifact(dsl.Artifact, tmp_path, "png"),
        )
    assert err.value.code == code and "batch=0099" in err.value.message
    recorded = local_store.get_json("runs/r1/error.json")
    assert (recorded["step"], recorded["code"]) == (step, code)
    assert recorded_error(local_store, "r1").one_line().startswith(f"{code}: {step}: batch=0099")
    registry = Registry(local_store, "digits")
    assert registry.alias(CHAMPION) == before and registry.versions() == [champion]


def test_string_labels_must_keep_the_meaning_the_champion_learned(local_store, tmp_path):
    """Class indices follow first appearance: removing the batch that introduced them moves them."""
    write_batch(local_store, png_table(30, labels=["cat", "dog"] * 15), "0000")
    write_batch(local_store, png_table(30, labels=["ant", "cat"] * 15, prefix="q"), "0001")
    publish_champion(local_store, tmp_path, ingest(local_store, IngestConfig()).fingerprint)  # cat 0, dog 1, ant 2
    champion = load_champion(local_store, "digits")
    local_store.delete("datasets/digits/batch=0000/part-0.parquet")
    write_batch(local_store, png_table(30, labels=["dog"] * 30, prefix="r"), "0002")  # now ant 0, cat 1, dog 2
    manifest = read_manifest(local_store, ingest(local_store, IngestConfig()).fingerprint)
    (finding,) = check_snapshot(manifest, champion, ValidateConfig())
    assert (finding.code, finding.severity, finding.count) == ("LABEL_DOMAIN", "error", 3)
    assert "0: 'cat' -> 'ant'" in finding.message and "start a new model" in finding.message


def test_labels_of_another_type_than_the_champions_are_an_error(local_store, tmp_path):
    write_batch(local_store, digits_table(40), "0000")
    publish_champion(local_store, tmp_path, ingest(local_store, IngestConfig()).fingerprint)
    champion = load_champion(local_store, "digits")
    local_store.delete("datasets/digits/batch=0000/part-0.parquet")
    write_batch(local_store, png_table(30, labels=["a", "b"] * 15), "0001")
    manifest = read_manifest(local_store, ingest(local_store, IngestConfig()).fingerprint)
    findings = check_snapshot(manifest, champion, ValidateConfig())
    assert [(f.code, f.severity) for f in findings] == [("LABEL_DTYPE", "error")]
    assert "labels are strings; the champion was trained on integers" in findings[0].message
