import json

import numpy as np
import pytest

from components._shared.model.files import META_FILE, ONNX_FILE
from components._shared.registry import CANARY, CHAMPION, PREVIOUS, Registry
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import LocalStore
from components.deploy_canary.config import DeployConfig
from components.deploy_canary.core import canary_analysis, deploy


@pytest.fixture(scope="module")
def models(trained_models):
    return trained_models.root


def _card(model_dir, parent, run_id):
    meta = json.loads((model_dir / META_FILE).read_text())
    return {
        "run_id": run_id,
        "parent_version": parent,
        "data": {"classes": meta["classes"]},
        "metrics": {"accuracy": 0.0},
    }


@pytest.fixture
def store(tmp_path):
    store = LocalStore(tmp_path / "store")
    seed_digits(store, SeedConfig(batches=2))
    return store


def test_first_model_is_promoted_and_canary_cleared(store, models):
    record = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    registry = Registry(store, "digits")
    assert record["decision"] == "promote" and registry.alias(CHAMPION).version == record["version"]
    assert registry.alias(CANARY).version is None
    assert store.get_json("runs/r1/decision.json")["version"] == record["version"]


def test_agreeing_challenger_is_promoted_and_previous_kept(store, models):
    first = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    second = deploy(store, models / "good2", _card(models / "good2", first["version"], "r2"), DeployConfig())
    registry = Registry(store, "digits")
    assert second["decision"] == "promote", second
    assert second["analysis"]["agreement"] > 0.9
    assert registry.alias(CHAMPION).version == second["version"]
    assert registry.alias(PREVIOUS).version == first["version"]


def test_failed_canary_rolls_back_and_champion_stays(store, models):
    first = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    bad = deploy(store, models / "untrained", _card(models / "untrained", first["version"], "r2"), DeployConfig())
    registry = Registry(store, "digits")
    assert bad["decision"] == "rollback" and "agreement" in bad["reason"]
    assert registry.alias(CHAMPION).version == first["version"]
    assert registry.alias(CANARY).version is None
    assert bad["version"] in registry.versions()  # kept for the record, never served


def test_champion_moved_during_the_run_is_not_overwritten(store, models):
    first = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    stale = deploy(store, models / "good2", _card(models / "good2", "some-older-version", "r2"), DeployConfig())
    assert stale["decision"] == "rollback" and "moved" in stale["reason"]
    assert Registry(store, "digits").alias(CHAMPION).version == first["version"]


def test_canary_analysis_without_traffic_defers_to_the_gate(models):
    result = canary_analysis(models / "good" / ONNX_FILE, None, None, DeployConfig())
    assert result["decision"] == "promote" and result["n"] == 0


def test_canary_analysis_measures_agreement(models):
    from components._shared.sampledata import load_digits_uint8

    images, _ = load_digits_uint8()
    same = canary_analysis(models / "good" / ONNX_FILE, models / "good" / ONNX_FILE, images[:300], DeployConfig())
    assert same["agreement"] == 1.0 and same["decision"] == "promote"
    assert np.isclose(same["canary_confidence"], same["champion_confidence"])
