"""Validate-data: check a snapshot against the champion's data contract, and test the new data
for drift against the champion's reference sample. Errors stop the run before training."""

from __future__ import annotations

import collections
import dataclasses
import io

import numpy as np

from components._shared.dataset import Finding
from components._shared.errors import DataValidationError
from components._shared.registry import CHAMPION, Registry
from components._shared.snapshot import Split, load_split, read_manifest
from components._shared.store import Store
from components.validate_data import drift

REFERENCE_FILE = "reference.npy"


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    model: str = "digits"
    allow_new_classes: bool = False
    min_train_rows: int = 20
    drift_p_val: float = 0.05


@dataclasses.dataclass
class Champion:
    version: str
    card: dict
    reference: np.ndarray | None


def load_champion(store: Store, model: str) -> Champion | None:
    registry = Registry(store, model)
    ref = registry.alias(CHAMPION)
    if ref is None or not ref.version:
        return None
    card = registry.card(ref.version)
    reference = None
    if REFERENCE_FILE in card.get("files", {}):
        data = store.get_bytes(registry.version_prefix(ref.version) + REFERENCE_FILE)
        reference = np.load(io.BytesIO(data), allow_pickle=False)
    return Champion(ref.version, card, reference)


def check_snapshot(train: Split, champion: Champion | None, config: ValidateConfig) -> list[Finding]:
    findings: list[Finding] = []
    if len(train) < config.min_train_rows:
        findings.append(Finding("ROW_COUNT", "error", "*", f"{len(train)} training rows; need at least "
                                f"{config.min_train_rows}", len(train)))
    duplicates = [i for i, n in collections.Counter(train.ids).items() if n > 1]
    if duplicates:
        findings.append(Finding("DUPLICATE_ID", "warning", "*", f"{len(duplicates)} example id(s) repeat",
                                len(duplicates), duplicates[:5]))
    if champion is None:
        return findings
    data = champion.card.get("data", {})
    shape = tuple(data.get("image_shape", ()))
    if shape and tuple(train.images.shape[1:]) != shape:
        findings.append(Finding("IMAGE_SHAPE", "error", train.batches[0] if len(train) else "*",
                                f"image shape {tuple(train.images.shape[1:])} differs from the champion's {shape}"))
    known = set(data.get("classes", []))
    if known:
        findings += _new_class_findings(train, known, config.allow_new_classes)
    return findings


def _new_class_findings(train: Split, known: set[int], allowed: bool) -> list[Finding]:
    findings = []
    for batch in sorted(set(train.batches)):
        labels = train.labels[np.asarray(train.batches) == batch]
        new = sorted(set(labels.tolist()) - known)
        if new:
            severity = "warning" if allowed else "error"
            findings.append(Finding("LABEL_NEW_CLASS", severity, batch,
                                    f"label(s) {new} are not among the champion's classes",
                                    int(np.isin(labels, new).sum()), new[:5]))
    return findings


def drift_window(train: Split, champion: Champion | None) -> Split:
    """The data the champion has not seen: batches newer than its training window."""
    if champion is None:
        return train
    seen = set(champion.card.get("data", {}).get("batches", []))
    new = train.where(np.array([b not in seen for b in train.batches], dtype=bool))
    return new if len(new) else train


def validate(store: Store, fingerprint: str, config: ValidateConfig) -> dict:
    """Returns the report; raises DataValidationError (after building the report) on errors."""
    manifest = read_manifest(store, fingerprint)
    train = load_split(store, fingerprint, "train", manifest)
    champion = load_champion(store, config.model)
    findings = check_snapshot(train, champion, config)
    report = {
        "fingerprint": fingerprint,
        "champion": champion.version if champion else None,
        "rows": {"train": len(train)},
        "findings": [dataclasses.asdict(f) for f in findings],
        "drift": _drift(train, champion, config),
    }
    errors = [f for f in findings if f.severity == "error"]
    report["status"] = "fail" if errors else "pass"
    return report


def _drift(train: Split, champion: Champion | None, config: ValidateConfig) -> dict:
    if champion is None or champion.reference is None:
        return {"decision": "no_reference", "is_drift": False, "reason": "no champion yet"}
    window = drift_window(train, champion)
    result = drift.ks_drift(champion.reference, drift.features(window.images), config.drift_p_val)
    return {**result, "reference_version": champion.version, "window_batches": sorted(set(window.batches))}


def raise_on_errors(report: dict) -> None:
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    if errors:
        first = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataValidationError(f"batch={first['batch']}: {first['message']}{more}", code=first["code"],
                                  hint="fix or remove the batch, then re-run; the champion is unchanged")
