import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components._shared.dataset import is_test_example, stable_bucket, stable_buckets
from components._shared.errors import DataValidationError, IntegrityError
from components._shared.readahead import read_ahead
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.snapshot import load_split, read_manifest
from components._shared.store import LocalStore, parquet_bytes
from components.ingest import core as ingest_core
from components.ingest.config import IngestConfig
from components.ingest.core import compute_fingerprint, ingest
from tests.helpers import digits_table, write_batch


def test_ingest_writes_snapshot_with_checksums_and_stable_split(store):
    seed_digits(store, SeedConfig(batches=2))
    result = ingest(store, IngestConfig())
    manifest = read_manifest(store, result.fingerprint)
    assert result.batches == ["0000", "0001"]
    assert result.image_shape == [8, 8, 1] and result.classes == list(range(10))
    assert set(manifest["objects"]) == {"train.parquet", "test.parquet"}
    test = load_split(store, result.fingerprint, "test", manifest)
    train = load_split(store, result.fingerprint, "train", manifest)
    assert len(train) + len(test) == 1797 - int(1797 * 0.2)
    assert all(is_test_example(i, 0.2) for i in test.ids)
    assert not set(train.ids) & set(test.ids)
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.25


def test_test_examples_stay_in_test_as_batches_accumulate(local_store):
    seed_digits(local_store, SeedConfig(batches=2))
    first = ingest(local_store, IngestConfig())
    seed_digits(local_store, SeedConfig(batches=1, append=True))
    second = ingest(local_store, IngestConfig())
    assert first.fingerprint != second.fingerprint
    test_before = set(load_split(local_store, first.fingerprint, "test").ids)
    train_after = set(load_split(local_store, second.fingerprint, "train").ids)
    assert test_before and not test_before & train_after


def test_fingerprint_same_for_same_data_and_changes_when_one_object_is_rewritten(store):
    seed_digits(store, SeedConfig(batches=2))
    before = compute_fingerprint(store, IngestConfig(test_fraction=0.2))
    assert compute_fingerprint(store, IngestConfig(test_fraction=0.2)) == before
    write_batch(store, digits_table(30, prefix="new"), "0001")
    assert compute_fingerprint(store, IngestConfig(test_fraction=0.2)) != before


def test_expected_fingerprint_mismatch_stops_ingest(local_store):
    seed_digits(local_store, SeedConfig(batches=1))
    with pytest.raises(DataValidationError) as err:
        ingest(local_store, IngestConfig(expected_fingerprint="0" * 32))
    assert err.value.code == "FINGERPRINT_MISMATCH"


@pytest.mark.parametrize(
    "make_bad, code",
    [
        (lambda: digits_table(30).drop_columns(["label"]), "MISSING_COLUMN"),
        (lambda: digits_table(30).slice(0, 0), "EMPTY_BATCH"),
        (lambda: digits_table(30).set_column(2, "label", pa.array([0.5] * 29 + [float("nan")])), "LABEL_NAN"),
        (lambda: digits_table(30, shape=(16, 16, 1)), "IMAGE_SHAPE"),
        (lambda: digits_table(30).set_column(2, "label", pa.array([-1] * 30, pa.int64())), "LABEL_DOMAIN"),
    ],
)
def test_bad_batch_is_named_with_its_problem(local_store, make_bad, code):
    write_batch(local_store, digits_table(40), "0000")
    write_batch(local_store, make_bad(), "0001")
    with pytest.raises(DataValidationError) as err:
        ingest(local_store, IngestConfig())
    assert err.value.code == code
    assert "batch=0001" in err.value.one_line() and "\n" not in err.value.one_line()
    assert local_store.list("snapshots/") == []


def test_corrupt_parquet_is_an_error_not_wrong_values(local_store):
    write_batch(local_store, digits_table(40), "0000")
    local_store.put_bytes("datasets/digits/batch=0001/part-0.parquet", parquet_bytes(digits_table(30))[:-40])
    with pytest.raises(DataValidationError) as err:
        ingest(local_store, IngestConfig())
    assert err.value.code == "PARQUET_CORRUPT" and "batch=0001" in err.value.message


def test_png_images_are_decoded(local_store):
    import io

    from PIL import Image

    images = [np.full((8, 8), i * 10, np.uint8) for i in range(25)]
    png = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        png.append(buf.getvalue())
    table = pa.table(
        {
            "id": [f"p{i}" for i in range(25)],
            "image": pa.array(png, pa.binary()),
            "label": pa.array([i % 3 for i in range(25)], pa.int64()),
        }
    )
    write_batch(local_store, table, "0000")
    result = ingest(local_store, IngestConfig())
    split = load_split(local_store, result.fingerprint, "train")
    assert result.image_shape == [8, 8, 1]
    assert set(np.unique(split.images)) <= {i * 10 for i in range(25)}


def test_flipped_byte_in_snapshot_is_detected(local_store):
    seed_digits(local_store, SeedConfig(batches=1))
    result = ingest(local_store, IngestConfig())
    key = f"snapshots/{result.fingerprint}/train.parquet"
    data = bytearray(local_store.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    local_store.put_bytes(key, bytes(data))
    with pytest.raises(IntegrityError):
        load_split(local_store, result.fingerprint, "train")


def test_replay_keeps_new_batches_whole_and_a_stratified_share_of_old_ones(local_store, tmp_path):
    from tests.unit.test_data_checks import publish_champion

    seed_digits(local_store, SeedConfig(batches=2))
    everything = ingest(local_store, IngestConfig())
    publish_champion(local_store, tmp_path, everything.fingerprint)
    seed_digits(local_store, SeedConfig(batches=1, append=True, seed=3))
    full = ingest(local_store, IngestConfig(replay_fraction=1.0))
    assert (
        compute_fingerprint(local_store, IngestConfig(test_fraction=0.2, replay_fraction=1.0)) == full.fingerprint
    )  # replay 1.0: everything, the watermark unread
    half = ingest(local_store, IngestConfig(replay_fraction=0.5))
    assert half.fingerprint != full.fingerprint
    assert half.fingerprint == compute_fingerprint(local_store, IngestConfig(test_fraction=0.2, replay_fraction=0.5))
    assert half.new_batches == ["0002"] and full.new_batches == ["0000", "0001", "0002"]  # taken whole
    full_train = load_split(local_store, full.fingerprint, "train")
    half_train = load_split(local_store, half.fingerprint, "train")
    old = lambda split: np.isin(split.batches, ["0000", "0001"])  # noqa: E731
    assert sorted(np.array(half_train.ids)[~old(half_train)]) == sorted(np.array(full_train.ids)[~old(full_train)])
    assert set(half_train.ids) < set(full_train.ids)
    kept = np.bincount(half_train.labels[old(half_train)], minlength=10) / np.bincount(
        full_train.labels[old(full_train)], minlength=10
    )
    assert np.all(np.abs(kept - 0.5) < 0.12), kept  # every class keeps about half of its old rows
    assert (
        load_split(local_store, half.fingerprint, "test").ids == load_split(local_store, full.fingerprint, "test").ids
    )


def test_replay_fraction_must_be_a_share():
    from components._shared.errors import ConfigError

    with pytest.raises(ConfigError):
        IngestConfig(replay_fraction=1.5)


def test_snapshot_streamed_in_small_record_batches_is_the_same_data(local_store, monkeypatch):
    from components.ingest import core

    seed_digits(local_store, SeedConfig(batches=2))
    whole = load_split(local_store, ingest(local_store, IngestConfig()).fingerprint, "train")
    other = LocalStore(local_store.root.parent / "other")
    seed_digits(other, SeedConfig(batches=2))
    monkeypatch.setattr(core, "READ_ROWS", 64)
    result = ingest(other, IngestConfig())
    streamed = load_split(other, result.fingerprint, "train")
    manifest = read_manifest(other, result.fingerprint)
    assert streamed.ids == whole.ids and np.array_equal(streamed.images, whole.images)
    assert np.array_equal(streamed.labels, whole.labels)
    assert sum(sum(c.values()) for c in manifest["label_counts"].values()) == sum(result.rows.values())


def test_stable_buckets_match_the_one_id_hash_with_and_without_salt():
    ids = [f"id-{i}" for i in range(500)] + ["ünïcode", ""]
    assert stable_buckets(ids).tolist() == [stable_bucket(i) for i in ids]
    assert stable_buckets(ids, salt="replay:").tolist() == [stable_bucket("replay:" + i) for i in ids]


def test_read_ahead_keeps_order_and_raises_at_the_failing_item():
    def produce():
        yield from range(5)
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item in read_ahead(produce()):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]
    assert list(read_ahead(iter([]))) == []


def test_big_row_groups_stream_batch_by_batch_into_the_same_snapshot(local_store, tmp_path, monkeypatch):
    """Row groups above WHOLE_ROW_GROUP_BYTES are decoded batch by batch (bounded memory); the
    snapshot is byte for byte the one the whole-group read gives."""
    import components.ingest.core as ingest_core

    table = pa.concat_tables([digits_table(400, prefix=f"p{i}") for i in range(3)])
    local_store.put_bytes("datasets/digits/batch=0000/part-0.parquet", parquet_bytes(table))
    monkeypatch.setattr(ingest_core, "READ_ROWS", 256)
    whole = read_manifest(local_store, ingest(local_store, IngestConfig()).fingerprint)["objects"]
    streamed_store = LocalStore(tmp_path / "streamed")
    streamed_store.put_bytes("datasets/digits/batch=0000/part-0.parquet", parquet_bytes(table))
    monkeypatch.setattr(ingest_core, "WHOLE_ROW_GROUP_BYTES", 0)
    calls = []
    original = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda self, **kw: calls.append(kw) or original(self, **kw))
    streamed = read_manifest(streamed_store, ingest(streamed_store, IngestConfig()).fingerprint)["objects"]
    assert calls and all(call["batch_size"] == 256 for call in calls)
    assert streamed == whole and whole["train.parquet"]["rows"] + whole["test.parquet"]["rows"] == 1200


def test_replay_keeps_a_rare_class_that_the_fraction_would_drop(local_store, tmp_path, monkeypatch):
    from tests.unit.test_data_checks import publish_champion

    monkeypatch.setattr(ingest_core, "MIN_REPLAY_PER_CLASS", 20)
    labels = np.array([9 if i % 100 == 0 else i % 2 for i in range(1700)])  # 17 rows of class 9
    write_batch(local_store, digits_table(1700, prefix="old", labels=labels), "0000")
    publish_champion(local_store, tmp_path, ingest(local_store, IngestConfig()).fingerprint)
    write_batch(local_store, digits_table(100, prefix="new"), "0001")
    result = ingest(local_store, IngestConfig(replay_fraction=0.1))
    train = load_split(local_store, result.fingerprint, "train")
    old_train = [(i, y) for i, y in zip(train.ids, train.labels) if i.startswith("old-")]
    rare_train = [f"old-{i}" for i in range(0, 1700, 100) if not is_test_example(f"old-{i}", 0.2)]
    assert sorted(i for i, y in old_train if y == 9) == sorted(rare_train)  # all ~14, not 10% of them
    common = np.bincount([y for _, y in old_train if y != 9], minlength=2)
    assert np.all((common > 40) & (common < 100)), common  # ~10% of ~670 training rows per class
    share = read_manifest(local_store, result.fingerprint)["window"]["replay_share"]
    assert share == {"0": 0.1, "1": 0.1, "9": 1.0}


def test_no_new_data_is_a_recorded_skip_unless_forced_or_new(local_store, tmp_path):
    from components.ingest.core import no_new_data
    from tests.unit.test_data_checks import publish_champion

    seed_digits(local_store, SeedConfig(batches=2))
    assert no_new_data(local_store, IngestConfig(), "r0") == {}  # no champion yet: the first run trains
    publish_champion(local_store, tmp_path, ingest(local_store, IngestConfig()).fingerprint)
    skip = no_new_data(local_store, IngestConfig(), "r1")
    assert skip["decision"] == "skip" and skip["reason"].startswith("no new data")
    assert local_store.get_json("runs/r1/decision.json") == skip
    assert no_new_data(local_store, IngestConfig(force=True), "r2") == {}
    seed_digits(local_store, SeedConfig(batches=1, append=True, seed=4))
    assert no_new_data(local_store, IngestConfig(), "r3") == {}  # a new batch: train
    assert not local_store.exists("runs/r2/decision.json") and not local_store.exists("runs/r3/decision.json")
