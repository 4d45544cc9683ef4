"""Your own photos, end to end: an ImageFolder of 64x64 RGB JPEGs is imported (`ctp data import`'s
core), ingested, and trains ResNet-18 under 2-process torchrun DDP through the stream loader with
flip and pad-and-crop on; the ONNX export serves 64x64x3 and is what was trained."""

import json
import math

import pytest

from components._shared.importer import ImportConfig, import_images
from components._shared.model.files import META_FILE, ONNX_FILE
from components._shared.model.serving import onnx_probabilities
from components._shared.model.triton import tensors
from components._shared.snapshot import load_split, read_manifest
from components._shared.store import LocalStore
from components.evaluate.core import check_parity
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.train.config import TrainConfig
from components.train.torchrun import launch
from tests.shapes import CLASSES, image_folder

PER_CLASS, EPOCHS, BATCH = 80, 3, 16  # 36 steps: enough for BatchNorm's running statistics (eval mode)


@pytest.mark.slow
def test_imported_jpegs_train_resnet18_under_ddp_with_flip_and_crop(tmp_path):
    store = LocalStore(tmp_path / "store")
    imported = import_images(
        store, str(image_folder(tmp_path / "photos", PER_CLASS)), ImportConfig(dataset="shapes", progress=False)
    )
    assert imported.batch is not None
    fingerprint = ingest(store, IngestConfig(dataset="shapes", model_name="shapes")).fingerprint
    assert read_manifest(store, fingerprint)["image_shape"] == [64, 64, 3]
    config = TrainConfig(
        store_uri=store.uri,
        fingerprint=fingerprint,
        out_dir=str(tmp_path / "model"),
        model_name="shapes",
        epochs=EPOCHS,
        batch_size=BATCH,
        checkpoint_every=0,
        flip=True,
        crop_pad=8,
    )
    config.save(tmp_path / "train.json")
    launch(tmp_path / "train.json", nproc_per_node=2)

    model_dir = tmp_path / "model"
    meta = json.loads((model_dir / META_FILE).read_text())
    assert (meta["arch"], meta["world_size"], meta["augment"]) == ("resnet18", 2, {"flip": True, "crop_pad": 8})
    test = load_split(store, fingerprint, "test")
    assert len(test) >= 30
    accuracy = float((onnx_probabilities(model_dir / ONNX_FILE, test.images).argmax(1) == test.labels).mean())
    chance = 1 / len(CLASSES)
    luck = 4 * math.sqrt(chance * (1 - chance) / len(test))  # 4 binomial standard deviations of a guesser
    assert accuracy >= chance + luck, f"test accuracy {accuracy:.2f}; chance is {chance:.2f} +- {luck / 4:.2f}"
    check_parity(model_dir, test.images)  # raises when the ONNX file is not the trained model
    assert tensors(model_dir / ONNX_FILE)["input"] == [("input", "TYPE_FP32", [3, 64, 64])]
