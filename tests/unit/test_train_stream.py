"""The training split as a bounded-memory stream (components/train/stream.py) on real snapshots made
by ingest: every row once per epoch across ranks and loader workers, equal counts per rank, seeded
order, exact resume, validation rows kept out, checksum first, memory bounded by the window."""

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from components._shared.dataset import ID, LABEL, images_to_array, stable_bucket
from components._shared.errors import IntegrityError
from components._shared.snapshot import SplitFile, load_split, split_key, verify_split
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.train import stream as stream_module
from components.train.stream import TrainStream, batch_loader
from tests.helpers import train_in_process, write_batch

WORLD, WORKERS = 2, 2


def numbered_snapshot(store, batches: int = 4, rows: int = 150, side: int = 8) -> str:
    """A snapshot whose every image carries its row number in its first two pixels."""
    for batch in range(batches):
        numbers = np.arange(batch * rows, (batch + 1) * rows)
        images = np.zeros((rows, side, side, 1), np.uint8)
        images[:, 0, 0, 0], images[:, 0, 1, 0] = numbers % 256, numbers // 256
        image_array, field = images_to_array(images)
        table = pa.Table.from_arrays(
            [pa.array([f"row-{n}" for n in numbers]), image_array, pa.array(numbers % 10, pa.int64())],
            schema=pa.schema([pa.field(ID, pa.string()), field, pa.field(LABEL, pa.int64())]),
        )
        write_batch(store, table, f"{batch:04d}")
    return ingest(store, IngestConfig()).fingerprint


def numbers(images) -> list[int]:
    images = np.asarray(images)
    return (images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 1, 0].astype(int)).tolist()


def streamed(stream: TrainStream, worker: int = 0, workers: int = 1) -> list[int]:
    rows = []
    for images, labels in stream.worker_batches(worker, workers):
        assert labels.tolist() == [n % 10 for n in numbers(images)]  # each label stays with its image
        rows += numbers(images)
    return rows


def ranks(store, fingerprint, **settings) -> list[TrainStream]:
    return [
        TrainStream(store, fingerprint, world_size=WORLD, rank=r, **{"batch_size": 16, "shuffle_rows": 64, **settings})
        for r in range(WORLD)
    ]


def carved(split, fraction: float) -> set[int]:
    cut = int(round(fraction * 10_000))
    return {n for n, i in zip(numbers(split.images), split.ids) if stable_bucket("validation:" + i) < cut}


def test_every_row_is_read_once_per_epoch_across_ranks_and_workers_and_ranks_get_equal_counts(local_store):
    fingerprint = numbered_snapshot(local_store)
    train = set(numbers(load_split(local_store, fingerprint, "train").images))
    streams = ranks(local_store, fingerprint)
    with SplitFile(local_store, fingerprint, "train") as split:
        assert len(split.group_rows) > 1
    for epoch in (0, 1):
        per_rank = []
        for stream in streams:
            stream.set_epoch(epoch)
            per_rank.append([n for worker in range(WORKERS) for n in streamed(stream, worker, WORKERS)])
        seen = [n for rows in per_rank for n in rows]
        assert len(seen) == len(set(seen))  # no row twice
        assert set(seen) <= train and len(train - set(seen)) < WORLD
        assert [len(rows) for rows in per_rank] == [len(train) // WORLD] * WORLD


def test_every_rank_runs_the_same_number_of_batches(local_store):
    fingerprint = numbered_snapshot(local_store, rows=101)
    for stream in ranks(local_store, fingerprint, batch_size=7):
        loader = batch_loader(stream, 0)
        assert len(list(loader)) == stream.batches_per_epoch == -(-stream.rows // WORLD // 7)


def test_order_changes_with_the_epoch_and_repeats_for_the_same_seed_and_epoch(local_store):
    fingerprint = numbered_snapshot(local_store)
    first, again = ranks(local_store, fingerprint)[0], ranks(local_store, fingerprint)[0]
    epoch0 = streamed(first)
    assert streamed(again) == epoch0
    first.set_epoch(1)
    assert streamed(first) != epoch0
    other_seed = ranks(local_store, fingerprint, seed=1)[0]
    assert streamed(other_seed) != epoch0


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_yields_exactly_the_batches_after_the_skipped_ones(store, workers):
    fingerprint = numbered_snapshot(store, batches=3, rows=100)
    stream = ranks(store, fingerprint)[1]
    stream.set_epoch(3)
    whole = [numbers(images) for images, _ in batch_loader(stream, workers)]
    assert len(whole) == stream.batches_per_epoch
    for skip in (1, 5, len(whole) - 1):
        stream.set_epoch(3, skip)
        resumed = [numbers(images) for images, _ in batch_loader(stream, workers)]
        assert resumed == whole[skip:]


def test_validation_rows_never_enter_the_stream_and_are_collected_once(local_store, monkeypatch):
    fingerprint = numbered_snapshot(local_store)
    split = load_split(local_store, fingerprint, "train")
    validation = carved(split, 0.2)
    streams = ranks(local_store, fingerprint, val_fraction=0.2)
    seen = {n for stream in streams for worker in range(WORKERS) for n in streamed(stream, worker, WORKERS)}
    assert validation and not seen & validation
    assert len(set(numbers(split.images)) - validation - seen) < WORLD
    assert streams[0].rows == len(split) - len(validation)
    assert set(numbers(streams[0].validation.images)) == validation
    assert len(streams[0].validation) == len(validation)

    monkeypatch.setattr(stream_module, "VALIDATION_ROWS", 10)
    capped = ranks(local_store, fingerprint, val_fraction=0.2)[0]
    assert len(capped.validation) == 10 and set(numbers(capped.validation.images)) < validation
    assert capped.rows == streams[0].rows  # carved rows past the cap stay out of training too


def test_reference_sample_is_seeded_uniform_and_holds_no_validation_rows(local_store):
    fingerprint = numbered_snapshot(local_store)
    split = load_split(local_store, fingerprint, "train")
    stream = ranks(local_store, fingerprint, val_fraction=0.2)[0]
    assert sorted(numbers(stream.sample_images(10**6, seed=0))) == sorted(
        set(numbers(split.images)) - carved(split, 0.2)
    )
    sample = numbers(stream.sample_images(50, seed=4))
    assert len(set(sample)) == 50 and sample == numbers(stream.sample_images(50, seed=4))
    assert sample != numbers(stream.sample_images(50, seed=5))


def flip_a_byte(store, fingerprint: str) -> None:
    key = split_key(fingerprint, "train")
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(key, bytes(data))


def test_a_corrupt_byte_fails_the_streaming_checksum(store):
    fingerprint = numbered_snapshot(store, batches=2, rows=50)
    verify_split(store, fingerprint, "train")
    flip_a_byte(store, fingerprint)
    with pytest.raises(IntegrityError) as err:
        verify_split(store, fingerprint, "train")
    assert err.value.code == "INTEGRITY_MISMATCH" and "train.parquet" in err.value.message


def test_training_on_a_corrupt_split_stops_before_the_first_step(local_store, tmp_path, monkeypatch):
    fingerprint = numbered_snapshot(local_store, batches=2, rows=50)
    flip_a_byte(local_store, fingerprint)
    monkeypatch.setattr(TrainStream, "__init__", lambda *a, **k: pytest.fail("read data before verifying it"))
    with pytest.raises(IntegrityError):
        train_in_process(local_store, fingerprint, tmp_path / "out", epochs=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_rank_of_a_ddp_run_stops_on_a_corrupt_split(local_store, tmp_path, capfd):
    from components._shared.errors import CtpError
    from components.train.config import TrainConfig
    from components.train.torchrun import launch

    fingerprint = numbered_snapshot(local_store, batches=2, rows=50)
    flip_a_byte(local_store, fingerprint)
    TrainConfig(
        store_uri=local_store.uri, fingerprint=fingerprint, out_dir=str(tmp_path / "out"), checkpoint_every=0
    ).save(tmp_path / "cfg.json")
    with pytest.raises(CtpError) as err:
        launch(tmp_path / "cfg.json", nproc_per_node=2)
    assert err.value.code == "TRAIN_FAILED"
    logs = capfd.readouterr().err
    assert "train.parquet does not match its manifest checksum" in logs  # rank 0
    assert "manifest checksum (found by rank 0)" in logs  # rank 1 stopped too, rather than waiting


def peak_bytes(consume) -> int:
    """Peak of numpy/Python memory (tracemalloc) plus the most Arrow memory added at any item
    ``consume`` yields (over what the process held before: other tests' tables may still be
    alive). Not timing based: it counts bytes held, whatever the machine's speed."""
    arrow_before, arrow_peak = pa.total_allocated_bytes(), 0
    tracemalloc.start()
    try:
        for _ in consume():
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_before)
        return tracemalloc.get_traced_memory()[1] + arrow_peak
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_shuffle_window_not_by_the_split(local_store):
    fingerprint = numbered_snapshot(local_store, batches=30, rows=200, side=32)
    stream = TrainStream(local_store, fingerprint, batch_size=16, shuffle_rows=128)
    split_bytes = stream.rows * 32 * 32
    assert stream.window_rows * 30 < stream.rows and max(stream.group_rows) * 20 < stream.rows

    def whole_split():
        with SplitFile(local_store, fingerprint, "train") as split:
            yield [split.read_group(g) for g in range(len(split.group_rows))]

    assert peak_bytes(whole_split) > split_bytes  # the measure sees a whole split when one is held
    streamed = peak_bytes(lambda: stream.worker_batches(0, 1))
    assert streamed < split_bytes / 4, (streamed, split_bytes)


def test_validate_data_tests_drift_on_a_bounded_sample_of_the_window(local_store, monkeypatch):
    from components.validate_data import core as validate_core

    fingerprint = numbered_snapshot(local_store, batches=2, rows=100)
    rows = len(load_split(local_store, fingerprint, "train"))
    report = validate_core.validate(local_store, fingerprint, validate_core.ValidateConfig())
    assert report.report["drift"]["n_window"] == rows
    monkeypatch.setattr(validate_core, "WINDOW_ROWS", 40)
    report = validate_core.validate(local_store, fingerprint, validate_core.ValidateConfig())
    assert report.report["drift"]["n_window"] == 40
