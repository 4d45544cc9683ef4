"""Evaluate: challenger vs champion on the same frozen test split, through the ONNX file that
will be served. Sliced by batch (old data the champion was trained on vs new data) and by class;
gated by a paired test on the same examples plus a per-slice non-regression (forgetting) limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components._shared.errors import CtpError
from components._shared.model.files import ONNX_FILE
from components._shared.model.inputs import to_array
from components._shared.model.serving import onnx_probabilities, onnx_session
from components._shared.snapshot import Split, load_split
from components._shared.store import Store
from components.evaluate.config import EvaluateConfig

PARITY_TOLERANCE = 1e-3
OLD, NEW = "old", "new"


def check_parity(model_dir: Path, images: np.ndarray) -> float:
    """Max |ONNX - PyTorch| logit difference; a mismatch means we would serve another model."""
    import torch

    from components._shared.model.network import load_model_dir

    x = to_array(images[:256])
    with torch.no_grad():
        expected = load_model_dir(model_dir)(torch.from_numpy(x)).numpy()
    actual = onnx_session(model_dir / ONNX_FILE).run(["logits"], {"input": x})[0]
    diff = float(np.abs(expected - actual).max()) if len(x) else 0.0
    if diff > PARITY_TOLERANCE:
        raise CtpError(
            f"ONNX export differs from the PyTorch model by {diff:.2e} (> {PARITY_TOLERANCE})",
            hint="the served model would not be the evaluated one; check the export",
            code="ONNX_PARITY",
        )
    return diff


# --- metrics -------------------------------------------------------------------------------------
def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    gaps = [
        abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).sum()
        for b in range(bins)
        if (which == b).any()
    ]
    return float(sum(gaps) / len(labels)) if len(labels) else 0.0


def summary(labels: np.ndarray, probs: np.ndarray, ece_bins: int = 10) -> dict:
    """The numbers compared per slice: accuracy, macro-F1, per-class recall, calibration."""
    from sklearn.metrics import f1_score

    predicted = probs.argmax(axis=1)
    present = sorted(set(labels.tolist()))
    return {
        "n": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=present)),
        "ece": expected_calibration_error(labels, probs, ece_bins),
        "per_class_recall": {str(c): float((predicted[labels == c] == c).mean()) for c in present},
    }


def metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    batches: list[str],
    old_batches: frozenset[str] = frozenset(),
    ece_bins: int = 10,
) -> dict:
    """Overall metrics, confusion matrix, accuracy per batch, and the old/new data slices."""
    from sklearn.metrics import confusion_matrix

    predicted = probs.argmax(axis=1)
    classes = sorted(set(labels.tolist()) | set(predicted.tolist()))
    batch_array = np.asarray(batches)
    is_old = np.isin(batch_array, sorted(old_batches))
    slices = {
        name: summary(labels[mask], probs[mask], ece_bins)
        for name, mask in ((OLD, is_old), (NEW, ~is_old))
        if mask.any()
    }
    return {
        **summary(labels, probs, ece_bins),
        "classes": classes,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        "by_batch": {b: float((predicted == labels)[batch_array == b].mean()) for b in sorted(set(batches))},
        "slices": slices,
    }


# --- paired tests on the same examples -----------------------------------------------------------
def _threshold(config: EvaluateConfig) -> float:
    """The accuracy difference the challenger must beat: -margin (non-inferiority) or 0 (superiority)."""
    return -config.margin if config.hypothesis == "non_inferiority" else 0.0


def paired_bootstrap(challenger_correct: np.ndarray, champion_correct: np.ndarray, config: EvaluateConfig) -> dict:
    """Lower (1 - alpha) confidence bound of the accuracy difference, resampling the same examples."""
    rng = np.random.default_rng(config.seed)
    diff = challenger_correct.astype(float) - champion_correct.astype(float)
    samples = rng.integers(0, len(diff), size=(config.bootstrap, len(diff)))
    lower = float(np.quantile(diff[samples].mean(axis=1), config.alpha))
    return {
        "test": "paired_bootstrap",
        "hypothesis": config.hypothesis,
        "delta": float(diff.mean()),
        "lower_bound": lower,
        "threshold": _threshold(config),
        "passed": lower > _threshold(config),
        "alpha": config.alpha,
        "margin": config.margin,
        "resamples": config.bootstrap,
    }


def mcnemar_exact(challenger_correct: np.ndarray, champion_correct: np.ndarray, config: EvaluateConfig) -> dict:
    """Exact McNemar: a one-sided binomial test on the discordant pairs.

    With margin m the null is 'accuracy delta <= -m'; given the observed discordance rate d, the
    share of discordant pairs the challenger wins is then at most (d - m) / 2d (m = 0: McNemar's
    exact test). If d <= m, even losing every discordant pair keeps the delta >= -m."""
    from scipy.stats import binomtest

    gains = int((challenger_correct & ~champion_correct).sum())
    losses = int((~challenger_correct & champion_correct).sum())
    n, discordant = len(challenger_correct), gains + losses
    margin = -_threshold(config)
    if margin > 0 and discordant <= margin * n:
        p_value = 0.0
    elif discordant == 0:
        p_value = 1.0
    else:
        share = (discordant / n - margin) / (2 * discordant / n)
        p_value = float(binomtest(gains, discordant, share, alternative="greater").pvalue)
    return {
        "test": "mcnemar",
        "hypothesis": config.hypothesis,
        "delta": (gains - losses) / n if n else 0.0,
        "gains": gains,
        "losses": losses,
        "p_value": p_value,
        "threshold": -margin,
        "passed": p_value < config.alpha,
        "alpha": config.alpha,
        "margin": config.margin,
    }


PAIRED_TESTS = {"paired_bootstrap": paired_bootstrap, "mcnemar": mcnemar_exact}


# --- the gate -------------------------------------------------------------------------------------
def _paired_check(paired: dict) -> dict:
    if paired["test"] == "mcnemar":
        detail = (
            f"accuracy delta {paired['delta']:+.4f}, McNemar exact p={paired['p_value']:.3g} "
            f"{'<' if paired['passed'] else '>='} alpha {paired['alpha']} for delta > {paired['threshold']:+g}"
        )
    else:
        detail = (
            f"accuracy delta {paired['delta']:+.4f} (lower bound {paired['lower_bound']:+.4f}) "
            f"{'>' if paired['passed'] else '<='} {paired['threshold']:+g} {paired['hypothesis']} threshold"
        )
    return {"name": paired["hypothesis"], "passed": paired["passed"], "reason": detail}


def _forgetting_check(challenger: dict, champion: dict, config: EvaluateConfig) -> dict | None:
    old_challenger, old_champion = challenger["slices"].get(OLD), champion["slices"].get(OLD)
    if old_challenger is None or old_champion is None:
        return None
    drop = old_champion["accuracy"] - old_challenger["accuracy"]
    passed = drop <= config.max_forgetting + 1e-12
    return {
        "name": "forgetting",
        "passed": passed,
        "drop": drop,
        "reason": (
            f"old-data accuracy {old_challenger['accuracy']:.4f} vs champion {old_champion['accuracy']:.4f}"
            f" (drop {drop:+.4f} {'<=' if passed else '>'} max_forgetting {config.max_forgetting})"
        ),
    }


def gate(challenger: dict, champion: dict | None, paired: dict | None, config: EvaluateConfig) -> dict:
    """Pass only if every check passes; the reason names the failed checks (or all when passing)."""
    if champion is None:
        ok = challenger["accuracy"] >= config.min_accuracy
        checks = [
            {
                "name": "absolute",
                "passed": ok,
                "reason": f"accuracy {challenger['accuracy']:.4f} {'>=' if ok else '<'} {config.min_accuracy}",
            }
        ]
    else:
        checks = [c for c in (_paired_check(paired), _forgetting_check(challenger, champion, config)) if c]
    failed = [c for c in checks if not c["passed"]]
    return {
        "decision": "fail" if failed else "pass",
        "rule": checks[0]["name"],
        "checks": checks,
        "reason": "; ".join(c["reason"] for c in (failed or checks)),
    }


def compare(
    labels: np.ndarray,
    batches: list[str],
    challenger_probs: np.ndarray,
    champion_probs: np.ndarray | None,
    old_batches: frozenset[str],
    config: EvaluateConfig,
) -> dict:
    """Metrics of both models on the same examples, the paired test, and the gate."""
    report = {
        "old_batches": sorted(old_batches),
        "champion": None,
        "paired": None,
        "challenger": metrics(labels, challenger_probs, batches, old_batches, config.ece_bins),
    }
    if champion_probs is not None:
        report["champion"] = metrics(labels, champion_probs, batches, old_batches, config.ece_bins)
        report["paired"] = PAIRED_TESTS[config.gate_test](
            challenger_probs.argmax(1) == labels, champion_probs.argmax(1) == labels, config
        )
    report["gate"] = gate(report["challenger"], report["champion"], report["paired"], config)
    return report


def evaluate(
    store: Store,
    fingerprint: str,
    challenger_dir: Path,
    champion_dir: Path | None,
    config: EvaluateConfig,
    old_batches: frozenset[str] = frozenset(),
) -> dict:
    test: Split = load_split(store, fingerprint, "test")
    parity = check_parity(challenger_dir, test.images)
    challenger_probs = onnx_probabilities(challenger_dir / ONNX_FILE, test.images)
    champion_probs = None if champion_dir is None else onnx_probabilities(champion_dir / ONNX_FILE, test.images)
    report = compare(test.labels, test.batches, challenger_probs, champion_probs, old_batches, config)
    return {"fingerprint": fingerprint, "onnx_parity_max_abs": parity, **report}


def evaluate_against_champion(
    store: Store, model: str, fingerprint: str, challenger_dir: Path, config: EvaluateConfig
) -> dict:
    """Resolve the current champion (if any), fetch its ONNX file, and evaluate both; the batches
    in the champion's card are the old-data slice."""
    import tempfile

    from components._shared.registry import CHAMPION, Registry

    registry = Registry(store, model)
    champion = registry.alias(CHAMPION)
    with tempfile.TemporaryDirectory() as tmp:
        champion_dir, old_batches = None, frozenset()
        if champion and champion.version:
            champion_dir = Path(tmp)
            registry.fetch(champion.version, ONNX_FILE, champion_dir / ONNX_FILE)
            old_batches = frozenset(registry.card(champion.version)["data"]["batches"])
        report = evaluate(store, fingerprint, challenger_dir, champion_dir, config, old_batches)
    report["champion_version"] = champion.version if champion else None
    return report


# --- the human report ----------------------------------------------------------------------------
def _row(label: str, challenger: dict, champion: dict | None) -> str:
    cells = [f"{challenger['n']}"] + [f"{challenger[k]:.4f}" for k in ("accuracy", "macro_f1", "ece")]
    if champion is not None:
        cells += [f"{champion[k]:.4f}" for k in ("accuracy", "macro_f1", "ece")]
    return f"| {label} | " + " | ".join(cells) + " |"


def markdown_report(report: dict) -> str:
    """The evaluation as Markdown, for the KFP UI (Output[Markdown])."""
    challenger, champion, verdict = report["challenger"], report["champion"], report["gate"]
    lines = [
        f"# Evaluation: gate {verdict['decision'].upper()}",
        "",
        f"Test snapshot `{report['fingerprint']}`; champion `{report.get('champion_version') or 'none'}`; "
        f"ONNX/PyTorch parity {report['onnx_parity_max_abs']:.1e}.",
        "",
        "## Gate",
        "",
    ]
    lines += [f"- {'pass' if c['passed'] else 'FAIL'} **{c['name']}**: {c['reason']}" for c in verdict["checks"]]
    header = "| slice | n | accuracy | macro-F1 | ECE |" + (
        " champion acc | champion F1 | champion ECE |" if champion else ""
    )
    lines += ["", "## Slices", "", header, "|" + "---|" * (header.count("|") - 1), _row("all", challenger, champion)]
    for name, values in challenger["slices"].items():
        lines.append(_row(f"{name} data", values, champion["slices"].get(name) if champion else None))
    lines += ["", "## Recall per class", "", "| class | challenger | champion |", "|---|---|---|"]
    for cls, recall in challenger["per_class_recall"].items():
        theirs = champion["per_class_recall"].get(cls) if champion else None
        lines.append(f"| {cls} | {recall:.4f} | {'-' if theirs is None else f'{theirs:.4f}'} |")
    return "\n".join(lines) + "\n"
