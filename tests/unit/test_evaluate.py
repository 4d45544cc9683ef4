"""Evaluate on really trained models: the same test split, ONNX parity, and the two rejections
the gate exists for (label-noised training data; gains on new data bought by forgetting old)."""

import shutil

import numpy as np
import pyarrow as pa
import pytest

from components._shared.dataset import LABEL, list_batches
from components._shared.errors import CtpError
from components._shared.model.files import META_FILE, ONNX_FILE, WEIGHTS_FILE
from components._shared.registry import CHAMPION, Registry
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.snapshot import load_split
from components._shared.store import LocalStore, parquet_bytes, read_parquet
from components.evaluate.config import EvaluateConfig
from components.evaluate.core import check_parity, evaluate, evaluate_against_champion
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from tests.helpers import train_in_process


def copy_batches(source, dest, *, only=None, noise: float = 0.0, seed: int = 0) -> str:
    """Copy labelled batches into ``dest`` (optionally some, optionally with a share of labels
    replaced by random classes) and ingest them; returns the snapshot fingerprint."""
    rng = np.random.default_rng(seed)
    for batch, keys in list_batches(source, "digits").items():
        if only and batch not in only:
            continue
        for key in keys:
            table = read_parquet(source, key)
            labels = table.column(LABEL).to_numpy().copy()
            flip = rng.random(len(labels)) < noise
            labels[flip] = rng.integers(0, 10, int(flip.sum()))
            dest.put_bytes(
                key,
                parquet_bytes(
                    table.set_column(table.schema.get_field_index(LABEL), LABEL, pa.array(labels, pa.int64()))
                ),
            )
    return ingest(dest, IngestConfig()).fingerprint


@pytest.fixture(scope="module")
def trained(trained_models):
    return trained_models.store, trained_models.fingerprint, trained_models.root


def publish_champion(store, model_dir, batches) -> str:
    registry = Registry(store, "digits")
    registry.publish(
        "champion-1",
        {n: model_dir / n for n in (WEIGHTS_FILE, ONNX_FILE, META_FILE)},
        {"data": {"batches": batches}, "metrics": {"accuracy": 0.0, "macro_f1": 0.0}},
    )
    registry.move_alias(CHAMPION, "champion-1", None, run_id="seed")
    return "champion-1"


def test_evaluate_compares_on_the_same_test_split(trained):
    store, fingerprint, root = trained
    report = evaluate(store, fingerprint, root / "weak", root / "good", EvaluateConfig())
    assert report["gate"]["decision"] == "fail" and report["paired"]["delta"] < 0
    assert report["challenger"]["n"] == report["champion"]["n"] == len(load_split(store, fingerprint, "test"))
    assert report["onnx_parity_max_abs"] < 1e-3
    assert 0.0 <= report["challenger"]["ece"] <= 1.0 and len(report["challenger"]["per_class_recall"]) == 10
    assert evaluate(store, fingerprint, root / "good", root / "weak", EvaluateConfig())["gate"]["decision"] == "pass"


def test_onnx_that_is_not_the_trained_model_fails_parity(trained, tmp_path):
    store, fingerprint, root = trained
    shutil.copytree(root / "good", tmp_path / "mixed")
    shutil.copy(root / "weak" / ONNX_FILE, tmp_path / "mixed" / ONNX_FILE)
    with pytest.raises(CtpError) as err:
        check_parity(tmp_path / "mixed", load_split(store, fingerprint, "test").images)
    assert err.value.code == "ONNX_PARITY"


@pytest.mark.parametrize("gate_test", ["paired_bootstrap", "mcnemar"])
def test_challenger_trained_on_label_noised_data_is_rejected_and_champion_stays(trained, tmp_path, gate_test):
    store, fingerprint, root = trained
    noisy = root / "noisy"
    if not noisy.exists():
        noisy_fingerprint = copy_batches(store, LocalStore(tmp_path / "noisy-store"), noise=0.6)
        train_in_process(LocalStore(tmp_path / "noisy-store"), noisy_fingerprint, noisy, epochs=3)
    registry_store = LocalStore(tmp_path / "registry")
    shutil.copytree(store.root, registry_store.root, dirs_exist_ok=True)
    champion = publish_champion(registry_store, root / "good", ["0000", "0001"])
    before = (Registry(registry_store, "digits").alias(CHAMPION), Registry(registry_store, "digits").versions())

    report = evaluate_against_champion(
        registry_store, "digits", fingerprint, noisy, EvaluateConfig(gate_test=gate_test)
    )

    assert report["champion_version"] == champion and report["paired"]["test"] == gate_test
    assert report["challenger"]["accuracy"] < report["champion"]["accuracy"]
    assert report["gate"]["decision"] == "fail" and not report["paired"]["passed"]
    assert (Registry(registry_store, "digits").alias(CHAMPION), Registry(registry_store, "digits").versions()) == before


def test_challenger_better_on_new_data_but_worse_on_old_data_is_rejected(trained, tmp_path):
    """The champion saw batches 0000-0001; three rotated batches arrive; a challenger fine-tuned
    on the new batches alone gains on them and forgets the old ones. (Seeds 0-6: it forgets 12-18
    points and gains 26-32; three new batches to two old keep it better overall.)"""
    store, _, root = trained
    grown = LocalStore(tmp_path / "grown")
    shutil.copytree(store.root, grown.root, dirs_exist_ok=True)
    seed_digits(grown, SeedConfig(batches=3, append=True, shift="rotation", strength=0.75, seed=1))
    fingerprint = ingest(grown, IngestConfig()).fingerprint
    new_only = LocalStore(tmp_path / "new-only")
    new_fingerprint = copy_batches(grown, new_only, only={"0002", "0003", "0004"})
    train_in_process(
        new_only,
        new_fingerprint,
        tmp_path / "forgetful",
        epochs=2,
        init="warm",
        init_weights=str(root / "good" / WEIGHTS_FILE),
        init_meta=str(root / "good" / META_FILE),
    )
    publish_champion(grown, root / "good", ["0000", "0001"])

    report = evaluate_against_champion(grown, "digits", fingerprint, tmp_path / "forgetful", EvaluateConfig())

    challenger, champion = report["challenger"]["slices"], report["champion"]["slices"]
    assert report["old_batches"] == ["0000", "0001"]
    assert challenger["new"]["accuracy"] > champion["new"]["accuracy"] + 0.05
    assert champion["old"]["accuracy"] - challenger["old"]["accuracy"] >= 0.02
    assert report["paired"]["passed"]  # better overall: only the forgetting limit stops it
    checks = {c["name"]: c["passed"] for c in report["gate"]["checks"]}
    assert checks == {"non_inferiority": True, "forgetting": False}
    assert report["gate"]["decision"] == "fail"
