import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from components._shared.model.files import META_FILE, ONNX_FILE, WEIGHTS_FILE
from components._shared.model.network import build_model
from components._shared.model.serving import onnx_probabilities
from components._shared.snapshot import load_split
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.train.config import TrainConfig
from components.train.torchrun import launch
from tests.helpers import digits_table, train_in_process, write_batch


def accuracy(model_dir: Path, split) -> float:
    return float((onnx_probabilities(model_dir / ONNX_FILE, split.images).argmax(1) == split.labels).mean())


@pytest.mark.slow
def test_two_process_gloo_ddp_run_trains_and_exports(seeded_store, tmp_path):
    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    config = TrainConfig(
        store_uri=seeded_store.uri, fingerprint=fingerprint, out_dir=str(tmp_path / "out"), epochs=3, checkpoint_every=0
    )
    config.save(tmp_path / "cfg.json")
    launch(tmp_path / "cfg.json", nproc_per_node=2)
    meta = json.loads((tmp_path / "out" / META_FILE).read_text())
    assert meta["world_size"] == 2 and meta["backend"] == "gloo"
    assert meta["history"][-1]["loss"] < meta["history"][0]["loss"]
    assert set(load_file(str(tmp_path / "out" / WEIGHTS_FILE))) >= {"classifier.weight", "classifier.bias"}
    assert accuracy(tmp_path / "out", load_split(seeded_store, fingerprint, "test")) > 0.8


def test_failed_worker_fails_the_launch_with_a_clear_error(tmp_path):
    from components._shared.errors import CtpError

    TrainConfig(
        store_uri=str(tmp_path / "nowhere"), fingerprint="missing", out_dir=str(tmp_path / "o"), checkpoint_every=0
    ).save(tmp_path / "cfg.json")
    with pytest.raises(CtpError) as err:
        launch(tmp_path / "cfg.json", nproc_per_node=1)
    assert err.value.code == "TRAIN_FAILED"


def test_training_is_reproducible_with_a_seed(seeded_store, tmp_path):
    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    a = train_in_process(seeded_store, fingerprint, tmp_path / "a", epochs=1)
    b = train_in_process(seeded_store, fingerprint, tmp_path / "b", epochs=1)
    assert a["history"][0]["loss"] == b["history"][0]["loss"]
    wa, wb = load_file(str(tmp_path / "a" / WEIGHTS_FILE)), load_file(str(tmp_path / "b" / WEIGHTS_FILE))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_warm_start_beats_scratch_after_one_epoch(seeded_store, tmp_path):
    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    test = load_split(seeded_store, fingerprint, "test")
    train_in_process(seeded_store, fingerprint, tmp_path / "champion", epochs=4)
    warm = train_in_process(
        seeded_store,
        fingerprint,
        tmp_path / "warm",
        epochs=1,
        seed=1,
        init_weights=str(tmp_path / "champion" / WEIGHTS_FILE),
        init_meta=str(tmp_path / "champion" / META_FILE),
    )
    train_in_process(seeded_store, fingerprint, tmp_path / "scratch", epochs=1, seed=1, init="scratch")
    assert warm["init"]["applied"] == "warm"
    assert accuracy(tmp_path / "warm", test) > accuracy(tmp_path / "scratch", test)


def test_new_class_grows_the_head_and_keeps_old_classes(local_store, tmp_path):
    from components._shared.sampledata import load_digits_uint8

    _, labels = load_digits_uint8()
    old = np.flatnonzero(labels < 8)[:900]
    write_batch(local_store, digits_table(1797).take(old), "0000")
    first = ingest(local_store, IngestConfig()).fingerprint
    train_in_process(local_store, first, tmp_path / "champion", epochs=5)
    write_batch(local_store, digits_table(1797).take(np.flatnonzero(labels >= 8)), "0001")
    second = ingest(local_store, IngestConfig()).fingerprint
    meta = train_in_process(
        local_store,
        second,
        tmp_path / "grown",
        epochs=2,
        init_weights=str(tmp_path / "champion" / WEIGHTS_FILE),
        init_meta=str(tmp_path / "champion" / META_FILE),
    )
    assert meta["init"] == {"policy": "auto", "applied": "warm", "grown_classes": 2}
    assert meta["num_classes"] == 10
    test = load_split(local_store, second, "test")
    old_test = test.where(test.labels < 8)
    assert accuracy(tmp_path / "grown", old_test) >= accuracy(tmp_path / "champion", old_test) - 0.03
    assert accuracy(tmp_path / "grown", test.where(test.labels >= 8)) > 0.5


def test_warm_policy_without_champion_is_a_config_error(seeded_store, tmp_path):
    from components._shared.errors import ConfigError

    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    with pytest.raises(ConfigError):
        train_in_process(seeded_store, fingerprint, tmp_path / "x", init="warm")


def test_large_images_use_resnet18():
    model = build_model("resnet18", [64, 64, 3], 5)
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 5
