"""Evaluate: challenger vs champion on the same frozen test split, through the ONNX file that
will be served, with a paired non-inferiority gate (bootstrap over the same examples)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from components._shared.errors import CtpError
from components._shared.snapshot import Split, load_split
from components._shared.store import Store
from components.train.core import META_FILE, ONNX_FILE, WEIGHTS_FILE, build_model, to_tensor

PARITY_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    min_accuracy: float = 0.8  # first model (no champion): absolute bar
    margin: float = 0.01  # non-inferiority margin vs the champion, in accuracy
    alpha: float = 0.05
    bootstrap: int = 2000
    seed: int = 0


def onnx_probabilities(onnx_path: Path, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = [session.run(["logits"], {"input": to_tensor(images[i:i + batch]).numpy()})[0]
              for i in range(0, len(images), batch)]
    return softmax(np.concatenate(logits) if logits else np.zeros((0, 1), np.float32))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def check_parity(model_dir: Path, images: np.ndarray) -> float:
    """Max |ONNX - PyTorch| logit difference; a mismatch means we would serve another model."""
    import onnxruntime as ort
    import torch
    from safetensors.torch import load_file

    meta = json.loads((model_dir / META_FILE).read_text())
    model = build_model(meta["arch"], meta["image_shape"], meta["num_classes"])
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
    x = to_tensor(images[:256])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(model_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    actual = session.run(["logits"], {"input": x.numpy()})[0]
    diff = float(np.abs(expected - actual).max()) if len(x) else 0.0
    if diff > PARITY_TOLERANCE:
        raise CtpError(f"ONNX export differs from the PyTorch model by {diff:.2e} (> {PARITY_TOLERANCE})",
                       hint="the served model would not be the evaluated one; check the export", code="ONNX_PARITY")
    return diff


def metrics(labels: np.ndarray, probs: np.ndarray, batches: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score

    predicted = probs.argmax(axis=1)
    classes = sorted(set(labels.tolist()) | set(predicted.tolist()))
    correct = predicted == labels
    batch_array = np.asarray(batches)
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=sorted(set(labels.tolist())))),
        "n": int(len(labels)),
        "classes": classes,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        "by_batch": {b: float(correct[batch_array == b].mean()) for b in sorted(set(batches))},
    }


def paired_bootstrap(challenger_correct: np.ndarray, champion_correct: np.ndarray, config: EvaluateConfig) -> dict:
    """Lower (1 - alpha) confidence bound of the accuracy difference on the same examples."""
    rng = np.random.default_rng(config.seed)
    diff = challenger_correct.astype(float) - champion_correct.astype(float)
    samples = rng.integers(0, len(diff), size=(config.bootstrap, len(diff)))
    boot = diff[samples].mean(axis=1)
    return {"test": "paired_bootstrap", "delta": float(diff.mean()), "lower_bound": float(np.quantile(boot, config.alpha)),
            "alpha": config.alpha, "margin": config.margin, "resamples": config.bootstrap}


def gate(challenger: dict, champion: dict | None, paired: dict | None, config: EvaluateConfig) -> dict:
    if champion is None:
        ok = challenger["accuracy"] >= config.min_accuracy
        return {"decision": "pass" if ok else "fail", "rule": "absolute",
                "reason": f"accuracy {challenger['accuracy']:.4f} {'>=' if ok else '<'} {config.min_accuracy}"}
    ok = paired["lower_bound"] > -config.margin
    return {"decision": "pass" if ok else "fail", "rule": "non_inferiority",
            "reason": (f"accuracy delta {paired['delta']:+.4f} (lower bound {paired['lower_bound']:+.4f}) "
                       f"{'>' if ok else '<='} -{config.margin} margin")}


def evaluate(store: Store, fingerprint: str, challenger_dir: Path, champion_dir: Path | None,
             config: EvaluateConfig) -> dict:
    test: Split = load_split(store, fingerprint, "test")
    parity = check_parity(challenger_dir, test.images)
    challenger_probs = onnx_probabilities(challenger_dir / ONNX_FILE, test.images)
    report = {"fingerprint": fingerprint, "onnx_parity_max_abs": parity,
              "challenger": metrics(test.labels, challenger_probs, test.batches), "champion": None, "paired": None}
    if champion_dir is not None:
        champion_probs = onnx_probabilities(champion_dir / ONNX_FILE, test.images)
        report["champion"] = metrics(test.labels, champion_probs, test.batches)
        report["paired"] = paired_bootstrap(challenger_probs.argmax(1) == test.labels,
                                            champion_probs.argmax(1) == test.labels, config)
    report["gate"] = gate(report["challenger"], report["champion"], report["paired"], config)
    return report


def evaluate_against_champion(store: Store, model: str, fingerprint: str, challenger_dir: Path,
                              config: EvaluateConfig) -> dict:
    """Resolve the current champion (if any), fetch its ONNX file, and evaluate both."""
    import tempfile

    from components._shared.registry import CHAMPION, Registry

    registry = Registry(store, model)
    champion = registry.alias(CHAMPION)
    with tempfile.TemporaryDirectory() as tmp:
        champion_dir = None
        if champion and champion.version:
            champion_dir = Path(tmp)
            registry.fetch(champion.version, ONNX_FILE, champion_dir / ONNX_FILE)
        report = evaluate(store, fingerprint, challenger_dir, champion_dir, config)
    report["champion_version"] = champion.version if champion else None
    return report
