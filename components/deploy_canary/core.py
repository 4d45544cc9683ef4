"""Canary deploy (local target): register the challenger, mark it `canary`, compare it with the
champion on held-out traffic through onnxruntime, then promote or roll back, and record why."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import tempfile
from pathlib import Path

import numpy as np

from components._shared.dataset import decode_images, list_batches
from components._shared.registry import CANARY, CHAMPION, Registry, new_version_id, utc_now
from components._shared.store import Store, read_parquet
from components.evaluate.core import onnx_probabilities
from components.train.core import META_FILE, ONNX_FILE, WEIGHTS_FILE

MODEL_FILES = (WEIGHTS_FILE, ONNX_FILE, META_FILE, "reference.npy")


@dataclasses.dataclass(frozen=True)
class DeployConfig:
    model: str = "digits"
    dataset: str = "digits"
    min_agreement: float = 0.7  # share of traffic where canary and champion predict the same class
    max_confidence_drop: float = 0.1  # mean top-class probability may fall at most this much
    traffic_rows: int = 2000  # most recent traffic examples replayed


def code_version() -> str:
    sha = os.environ.get("CTP_GIT_SHA", "")
    return f"ctp {importlib.metadata.version('ctp')}" + (f" ({sha})" if sha else "")


def build_card(meta: dict, evaluation: dict, validation: dict, manifest: dict, *, run_id: str,
               trigger: str) -> dict:
    """Everything needed to answer 'where did this model come from and why was it kept'."""
    return {
        "run_id": run_id,
        "trigger": trigger,
        "parent_version": meta.get("parent_version"),
        "created_at": utc_now(),
        "code_version": code_version(),
        "image": os.environ.get("CTP_IMAGE", ""),
        "data": {"fingerprint": manifest["fingerprint"], "dataset": manifest["dataset"],
                 "batches": sorted(manifest["batches"]), "image_shape": manifest["image_shape"],
                 "classes": meta["classes"]},
        "training": {k: meta[k] for k in ("arch", "init", "epochs", "batch_size", "lr", "seed", "world_size",
                                          "backend", "train_rows", "history")},
        "metrics": {k: evaluation["challenger"][k] for k in ("accuracy", "macro_f1", "n", "by_batch")},
        "champion_metrics": (None if evaluation["champion"] is None else
                             {k: evaluation["champion"][k] for k in ("accuracy", "macro_f1")}),
        "gate": evaluation["gate"],
        "paired_test": evaluation["paired"],
        "drift": validation.get("drift"),
    }


def recent_traffic(store: Store, dataset: str, rows: int) -> tuple[np.ndarray | None, list[str]]:
    """The newest traffic batches, up to ``rows`` examples."""
    chunks, used = [], []
    for batch, keys in reversed(list_batches(store, dataset, kind="traffic").items()):
        for key in keys:
            chunks.append(decode_images(read_parquet(store, key)))
        used.append(batch)
        if sum(len(c) for c in chunks) >= rows:
            break
    return (np.concatenate(chunks)[:rows] if chunks else None), sorted(used)


def canary_analysis(challenger_onnx: Path, champion_onnx: Path | None, traffic: np.ndarray | None,
                    config: DeployConfig) -> dict:
    if traffic is None or not len(traffic):
        return {"decision": "promote", "reason": "no traffic to replay; the evaluation gate decides", "n": 0}
    canary = onnx_probabilities(challenger_onnx, traffic)
    if not np.isfinite(canary).all():
        return {"decision": "rollback", "reason": "canary produced non-finite outputs", "n": len(traffic)}
    evidence = {"n": int(len(traffic)), "canary_confidence": float(canary.max(1).mean())}
    if champion_onnx is None:
        return {**evidence, "decision": "promote", "reason": "first model: served traffic without errors"}
    champion = onnx_probabilities(champion_onnx, traffic)
    evidence["champion_confidence"] = float(champion.max(1).mean())
    evidence["agreement"] = float((canary.argmax(1) == champion.argmax(1)).mean())
    drop = evidence["champion_confidence"] - evidence["canary_confidence"]
    if evidence["agreement"] < config.min_agreement:
        return {**evidence, "decision": "rollback",
                "reason": f"agreement {evidence['agreement']:.3f} < {config.min_agreement}"}
    if drop > config.max_confidence_drop:
        return {**evidence, "decision": "rollback",
                "reason": f"mean confidence fell by {drop:.3f} > {config.max_confidence_drop}"}
    return {**evidence, "decision": "promote",
            "reason": f"agreement {evidence['agreement']:.3f}, confidence change {-drop:+.3f}"}


def deploy(store: Store, challenger_dir: Path, card: dict, config: DeployConfig) -> dict:
    """Register, canary, analyse, promote or roll back. Returns the recorded decision."""
    registry = Registry(store, config.model)
    run_id = card["run_id"]
    champion_ref = registry.alias(CHAMPION)
    version = new_version_id()
    registry.publish(version, {name: challenger_dir / name for name in MODEL_FILES}, card)
    registry.move_alias(CANARY, version, registry.alias(CANARY), run_id=run_id, reason="canary analysis")
    traffic, traffic_batches = recent_traffic(store, config.dataset, config.traffic_rows)
    with tempfile.TemporaryDirectory() as tmp:
        champion_onnx = None
        if champion_ref and champion_ref.version:
            champion_onnx = registry.fetch(champion_ref.version, ONNX_FILE, Path(tmp) / ONNX_FILE)
        analysis = canary_analysis(challenger_dir / ONNX_FILE, champion_onnx, traffic, config)
    analysis["traffic_batches"] = traffic_batches
    decision = _apply(registry, version, champion_ref, card, analysis, run_id)
    record = {"run_id": run_id, "model": config.model, "version": version, "decided_at": utc_now(),
              "previous_champion": champion_ref.version if champion_ref else None, **decision,
              "analysis": analysis}
    store.put_json(f"runs/{run_id}/decision.json", record)
    return record


def _apply(registry: Registry, version: str, champion_ref, card: dict, analysis: dict, run_id: str) -> dict:
    current = champion_ref.version if champion_ref else None
    if card.get("parent_version") != current:
        outcome = {"decision": "rollback", "reason": f"champion moved to {current} while this run trained "
                   f"from {card.get('parent_version')}; re-run to compare against it"}
    elif analysis["decision"] == "promote":
        won = registry.promote(version, champion_ref, run_id=run_id, reason=analysis["reason"])
        outcome = ({"decision": "promote", "reason": analysis["reason"]} if won else
                   {"decision": "rollback", "reason": "another run moved the champion first (compare-and-swap lost)"})
    else:
        outcome = {"decision": "rollback", "reason": analysis["reason"]}
    registry.move_alias(CANARY, None, registry.alias(CANARY), run_id=run_id, reason=f"canary {outcome['decision']}")
    return outcome
