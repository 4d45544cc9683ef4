import numpy as np
import pytest

from components._shared.errors import CtpError
from components._shared.snapshot import load_split
from components.evaluate.core import EvaluateConfig, check_parity, evaluate, gate, metrics, paired_bootstrap
from components.ingest.core import IngestConfig, ingest
from components.train.core import ONNX_FILE
from tests.helpers import train_in_process


def test_metrics_on_known_predictions():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7]])
    result = metrics(labels, probs, ["a", "a", "b", "b"])
    assert result["accuracy"] == 0.75
    assert result["confusion_matrix"] == [[1, 1], [0, 2]]
    assert result["by_batch"] == {"a": 0.5, "b": 1.0}
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_paired_gate_rejects_a_clearly_worse_challenger_and_accepts_an_equal_one():
    rng = np.random.default_rng(0)
    champion = rng.random(1000) < 0.95
    worse = champion & (rng.random(1000) < 0.9)
    config = EvaluateConfig()
    assert gate({"accuracy": worse.mean()}, {}, paired_bootstrap(worse, champion, config), config)["decision"] == "fail"
    assert gate({"accuracy": 1}, {}, paired_bootstrap(champion, champion, config), config)["decision"] == "pass"


def test_first_model_uses_the_absolute_bar():
    config = EvaluateConfig(min_accuracy=0.9)
    assert gate({"accuracy": 0.85}, None, None, config)["decision"] == "fail"
    assert gate({"accuracy": 0.95}, None, None, config)["decision"] == "pass"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from components._shared.sampledata import SeedConfig, seed_digits
    from components._shared.store import LocalStore

    root = tmp_path_factory.mktemp("eval")
    store = LocalStore(root / "store")
    seed_digits(store, SeedConfig(batches=2))
    fingerprint = ingest(store, IngestConfig()).fingerprint
    train_in_process(store, fingerprint, root / "good", epochs=4)
    train_in_process(store, fingerprint, root / "weak", epochs=1, lr=1e-4)
    return store, fingerprint, root


def test_evaluate_compares_on_the_same_test_split(trained):
    store, fingerprint, root = trained
    report = evaluate(store, fingerprint, root / "weak", root / "good", EvaluateConfig())
    assert report["gate"]["decision"] == "fail" and report["paired"]["delta"] < 0
    assert report["challenger"]["n"] == report["champion"]["n"] == len(load_split(store, fingerprint, "test"))
    assert report["onnx_parity_max_abs"] < 1e-3
    assert evaluate(store, fingerprint, root / "good", root / "weak", EvaluateConfig())["gate"]["decision"] == "pass"


def test_onnx_that_is_not_the_trained_model_fails_parity(trained, tmp_path):
    import shutil

    store, fingerprint, root = trained
    shutil.copytree(root / "good", tmp_path / "mixed")
    shutil.copy(root / "weak" / ONNX_FILE, tmp_path / "mixed" / ONNX_FILE)
    with pytest.raises(CtpError) as err:
        check_parity(tmp_path / "mixed", load_split(store, fingerprint, "test").images)
    assert err.value.code == "ONNX_PARITY"
