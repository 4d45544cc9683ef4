"""The evaluation gate on constructed predictions: metrics, calibration, the two paired tests,
and the forgetting limit (no training; every number here is computed by hand)."""

import math

import numpy as np
import pytest

from components._shared.errors import ConfigError
from components.evaluate.config import EvaluateConfig
from components.evaluate.core import (
    compare,
    expected_calibration_error,
    markdown_report,
    mcnemar_exact,
    metrics,
    paired_bootstrap,
)


def probs_for(labels: np.ndarray, correct: np.ndarray, classes: int = 2, confidence: float = 0.8) -> np.ndarray:
    """Predictions that are right exactly where ``correct`` says, with the given top confidence."""
    predicted = np.where(correct, labels, (labels + 1) % classes)
    probs = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    probs[np.arange(len(labels)), predicted] = confidence
    return probs


def hits(n: int, right: int) -> np.ndarray:
    return np.arange(n) < right


def test_metrics_on_known_predictions_with_slices_and_recall():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7]])
    result = metrics(labels, probs, ["a", "a", "b", "b"], old_batches=frozenset({"a"}))
    assert result["accuracy"] == 0.75
    assert result["confusion_matrix"] == [[1, 1], [0, 2]]
    assert result["by_batch"] == {"a": 0.5, "b": 1.0}
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert result["per_class_recall"] == {"0": 0.5, "1": 1.0}
    assert result["slices"]["old"]["accuracy"] == 0.5 and result["slices"]["old"]["n"] == 2
    assert result["slices"]["new"]["accuracy"] == 1.0 and result["slices"]["new"]["per_class_recall"] == {"1": 1.0}


def test_ece_is_zero_when_calibrated_and_the_gap_when_overconfident():
    labels = np.zeros(10, int)
    calibrated = probs_for(labels, hits(10, 9), confidence=0.9)
    assert expected_calibration_error(labels, calibrated) == pytest.approx(0.0)
    overconfident = probs_for(labels, hits(10, 5), confidence=1.0)
    assert expected_calibration_error(labels, overconfident) == pytest.approx(0.5)


def test_mcnemar_exact_matches_the_binomial_tail_by_hand():
    n = 100
    champion = hits(n, 80)
    challenger = champion.copy()
    challenger[80:90] = True  # 10 gains
    challenger[:2] = False  # 2 losses
    superiority = mcnemar_exact(challenger, champion, EvaluateConfig(hypothesis="superiority"))
    assert (superiority["gains"], superiority["losses"]) == (10, 2)
    assert superiority["p_value"] == pytest.approx((math.comb(12, 10) + 12 + 1) / 2**12)
    assert superiority["passed"] and superiority["delta"] == pytest.approx(0.08)
    share = (0.12 - 0.01) / 0.24  # null share of gains at delta = -margin
    tail = sum(math.comb(12, k) * share**k * (1 - share) ** (12 - k) for k in range(10, 13))
    assert mcnemar_exact(challenger, champion, EvaluateConfig())["p_value"] == pytest.approx(tail)


def test_identical_models_are_non_inferior_but_not_superior_under_both_tests():
    same = hits(500, 450)
    for test in ("paired_bootstrap", "mcnemar"):
        non_inferior = compare(
            np.zeros(500, int),
            ["b"] * 500,
            probs_for(np.zeros(500, int), same),
            probs_for(np.zeros(500, int), same),
            frozenset(),
            EvaluateConfig(gate_test=test),
        )
        superior = compare(
            np.zeros(500, int),
            ["b"] * 500,
            probs_for(np.zeros(500, int), same),
            probs_for(np.zeros(500, int), same),
            frozenset(),
            EvaluateConfig(gate_test=test, hypothesis="superiority"),
        )
        assert non_inferior["gate"]["decision"] == "pass", (test, non_inferior["gate"])
        assert superior["gate"]["decision"] == "fail", (test, superior["gate"])


@pytest.mark.parametrize("test", ["paired_bootstrap", "mcnemar"])
def test_a_clearly_worse_challenger_fails_and_a_slightly_better_one_passes(test):
    rng = np.random.default_rng(0)
    champion = rng.random(1000) < 0.95
    worse = champion & (rng.random(1000) < 0.9)
    config = EvaluateConfig(gate_test=test)
    assert paired_test(test)(worse, champion, config)["passed"] is False
    better = champion | (rng.random(1000) < 0.5)
    assert paired_test(test)(better, champion, config)["passed"] is True


def paired_test(name):
    return {"paired_bootstrap": paired_bootstrap, "mcnemar": mcnemar_exact}[name]


def test_first_model_uses_the_absolute_bar():
    labels = np.zeros(100, int)
    config = EvaluateConfig(min_accuracy=0.9)
    low = compare(labels, ["b"] * 100, probs_for(labels, hits(100, 85)), None, frozenset(), config)
    high = compare(labels, ["b"] * 100, probs_for(labels, hits(100, 95)), None, frozenset(), config)
    assert (low["gate"]["decision"], low["gate"]["rule"]) == ("fail", "absolute")
    assert high["gate"]["decision"] == "pass" and high["paired"] is None


def forgetting_case(old_drop: int):
    """500 old + 500 new examples; the challenger gains 25 points on new data and loses
    ``old_drop`` of 500 old examples the champion got right."""
    labels = np.tile([0, 1], 500)
    batches = ["0000"] * 500 + ["0002"] * 500
    champion = np.concatenate([hits(500, 475), hits(500, 350)])
    challenger = np.concatenate([hits(500, 475 - old_drop), hits(500, 475)])
    return labels, batches, probs_for(labels, challenger), probs_for(labels, champion)


@pytest.mark.parametrize("test", ["paired_bootstrap", "mcnemar"])
def test_better_on_new_data_but_worse_on_old_data_is_rejected(test):
    labels, batches, challenger, champion = forgetting_case(old_drop=15)  # 3 points on old data
    report = compare(labels, batches, challenger, champion, frozenset({"0000"}), EvaluateConfig(gate_test=test))
    assert report["paired"]["passed"] and report["paired"]["delta"] == pytest.approx(0.11)
    assert report["challenger"]["slices"]["new"]["accuracy"] > report["champion"]["slices"]["new"]["accuracy"]
    forgetting = report["gate"]["checks"][1]
    assert forgetting["name"] == "forgetting" and forgetting["drop"] == pytest.approx(0.03)
    assert report["gate"]["decision"] == "fail" and "old-data accuracy" in report["gate"]["reason"]


def test_forgetting_within_the_limit_passes_and_the_limit_is_configurable():
    labels, batches, challenger, champion = forgetting_case(old_drop=5)  # 1 point
    old = frozenset({"0000"})
    assert compare(labels, batches, challenger, champion, old, EvaluateConfig())["gate"]["decision"] == "pass"
    strict = compare(labels, batches, challenger, champion, old, EvaluateConfig(max_forgetting=0.005))
    assert strict["gate"]["decision"] == "fail"


def test_bad_gate_settings_are_config_errors():
    for bad in ({"gate_test": "t-test"}, {"hypothesis": "equivalence"}, {"alpha": 0.0}, {"max_forgetting": -0.1}):
        with pytest.raises(ConfigError):
            EvaluateConfig(**bad)


def test_markdown_report_shows_checks_slices_and_recall():
    labels, batches, challenger, champion = forgetting_case(old_drop=15)
    report = compare(labels, batches, challenger, champion, frozenset({"0000"}), EvaluateConfig())
    text = markdown_report({**report, "fingerprint": "f" * 32, "onnx_parity_max_abs": 1e-6, "champion_version": "v1"})
    assert text.startswith("# Evaluation: gate FAIL")
    assert "- FAIL **forgetting**" in text and "- pass **non_inferiority**" in text
    assert "| old data | 500 | 0.9200 |" in text and "| new data | 500 | 0.9500 |" in text
    assert "| 0 | " in text and "| 1 | " in text
