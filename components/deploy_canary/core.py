"""Canary deploy (local target): register the challenger, mark it `canary`, compare it with the
champion on held-out traffic through onnxruntime, then promote or roll back, and record why."""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from pathlib import Path

import numpy as np

from components._shared.dataset import decode_images, list_batches
from components._shared.model import triton
from components._shared.model.files import META_FILE, MODEL_FILES, ONNX_FILE
from components._shared.model.serving import onnx_probabilities
from components._shared.registry import CANARY, CHAMPION, Registry, new_version_id, utc_now
from components._shared.snapshot import data_contract
from components._shared.store import Store, read_parquet
from components.deploy_canary.config import DeployConfig

TRAINING_CARD_KEYS = (
    "arch",
    "init",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "world_size",
    "backend",
    "train_rows",
    "history",
    "early_stopping",
    "checkpoints",
    "train_seconds",
    "steps",
    "amp",
)
NO_TRAFFIC = "no traffic to replay; the evaluation gate decides"


def code_version() -> str:
    sha = os.environ.get("CTP_GIT_SHA", "")
    return f"ctp {importlib.metadata.version('ctp')}" + (f" ({sha})" if sha else "")


def build_card(
    meta: dict, evaluation: dict, validation: dict, manifest: dict, *, run_id: str, trigger: str, evidence_uri: str = ""
) -> dict:
    """Everything needed to answer 'where did this model come from and why was it kept'."""
    return {
        "run_id": run_id,
        "trigger": trigger,
        "trigger_evidence": evidence_uri or None,  # e.g. the drift monitor's report that started the run
        "parent_version": meta.get("parent_version"),
        "created_at": utc_now(),
        "code_version": code_version(),
        "image": os.environ.get("CTP_IMAGE", ""),
        "data": {
            "fingerprint": manifest["fingerprint"],
            "dataset": manifest["dataset"],
            "batches": sorted(manifest["batches"]),
            **data_contract(manifest),
            "classes": meta["classes"],
        },
        "training": {k: meta.get(k) for k in TRAINING_CARD_KEYS},
        "metrics": {
            k: evaluation["challenger"][k]
            for k in ("accuracy", "macro_f1", "ece", "n", "by_batch", "per_class_recall", "slices")
        },
        "champion_metrics": (
            None if evaluation["champion"] is None else {k: evaluation["champion"][k] for k in ("accuracy", "macro_f1")}
        ),
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


def compare_predictions(canary: np.ndarray, champion: np.ndarray, config: DeployConfig) -> dict:
    """Canary vs champion on the same inputs: agreement of predicted classes, and whether the
    canary's top-class confidence fell (one-sided Kolmogorov-Smirnov, alibi-detect) by more than
    the limit. Shared by the local replay and the KServe intervals."""
    if not np.isfinite(canary).all():
        return {"decision": "rollback", "reason": "canary produced non-finite outputs", "n": int(len(canary))}
    from alibi_detect.cd import KSDrift  # ~5 s import: only on this path

    canary_conf, champion_conf = canary.max(1), champion.max(1)
    # alternative="less": the champion's confidence CDF lies below the canary's, i.e. the canary is less sure
    ks = KSDrift(champion_conf[:, None].astype(np.float32), p_val=config.alpha, alternative="less")
    p_value = float(np.atleast_1d(ks.predict(canary_conf[:, None].astype(np.float32))["data"]["p_val"])[0])
    evidence = {
        "n": int(len(canary)),
        "agreement": float((canary.argmax(1) == champion.argmax(1)).mean()),
        "canary_confidence": float(canary_conf.mean()),
        "champion_confidence": float(champion_conf.mean()),
        "confidence_ks_p_value": p_value,
    }
    drop = evidence["champion_confidence"] - evidence["canary_confidence"]
    if evidence["agreement"] < config.min_agreement:
        # After a real shift the champion is the one that is wrong, so low agreement alone is not
        # a failure: the canary must also be the more confident model where the two disagree.
        disagree = canary.argmax(1) != champion.argmax(1)
        evidence["disagreement_confidence"] = {
            "canary": float(canary_conf[disagree].mean()),
            "champion": float(champion_conf[disagree].mean()),
        }
        if evidence["disagreement_confidence"]["canary"] <= evidence["disagreement_confidence"]["champion"]:
            return {
                **evidence,
                "decision": "rollback",
                "reason": f"agreement {evidence['agreement']:.3f} < {config.min_agreement} and the canary is "
                f"not more confident than the champion where they disagree",
            }
    if p_value < config.alpha and drop > config.max_confidence_drop:
        return {
            **evidence,
            "decision": "rollback",
            "reason": f"mean confidence fell by {drop:.3f} > "
            f"{config.max_confidence_drop} (KS p={p_value:.2g} < {config.alpha})",
        }
    return {
        **evidence,
        "decision": "promote",
        "reason": f"agreement {evidence['agreement']:.3f}, confidence change {-drop:+.3f}",
    }


def canary_analysis(
    challenger_onnx: Path, champion_onnx: Path | None, traffic: np.ndarray | None, config: DeployConfig
) -> dict:
    """Local target: replay traffic through both ONNX files."""
    if traffic is None or not len(traffic):
        return {"decision": "promote", "reason": NO_TRAFFIC, "n": 0}
    canary = onnx_probabilities(challenger_onnx, traffic)
    if champion_onnx is None:
        if not np.isfinite(canary).all():
            return {"decision": "rollback", "reason": "canary produced non-finite outputs", "n": len(traffic)}
        return {
            "n": int(len(traffic)),
            "canary_confidence": float(canary.max(1).mean()),
            "decision": "promote",
            "reason": "first model: served traffic without errors",
        }
    return compare_predictions(canary, onnx_probabilities(champion_onnx, traffic), config)


def card_from_artifacts(
    store: Store, challenger_dir: Path, evaluation_path: Path, validation_path: Path, fingerprint: str, **provenance
) -> dict:
    """The model card from the upstream steps' outputs (train meta, evaluation, validation, snapshot)."""
    import json

    from components._shared.snapshot import read_manifest

    return build_card(
        json.loads((challenger_dir / META_FILE).read_text()),
        json.loads(evaluation_path.read_text()),
        json.loads(validation_path.read_text()),
        read_manifest(store, fingerprint),
        **provenance,
    )


def deploy(
    store: Store, challenger_dir: Path, card: dict, config: DeployConfig, rollout=None, *, guard=lambda: None
) -> dict:
    """Register, canary, analyse, promote or roll back. Returns the recorded decision.

    ``guard`` raises unless this run may move the aliases (the component's: it holds the model's
    lease, lease.hold); it is called before the canary alias moves and before the decision.

    ``rollout`` None: the local target (replayed traffic). Otherwise a serving target such as
    kserve.KServeRollout: ``analyse`` canaries the version and watches it, ``finish`` applies
    the decision to serving after the registry's champion moved (or did not)."""
    registry = Registry(store, config.model_name)
    run_id = card["run_id"]
    champion_ref = registry.alias(CHAMPION)
    version = new_version_id()
    with tempfile.TemporaryDirectory() as tmp:  # the version carries Triton's model repository too
        files = {name: challenger_dir / name for name in MODEL_FILES}
        registry.publish(version, {**files, **triton.repository(config.model_name, files[ONNX_FILE], Path(tmp))}, card)
    guard()
    registry.move_alias(CANARY, version, registry.alias(CANARY), run_id=run_id, reason="canary analysis")
    with tempfile.TemporaryDirectory() as tmp:
        champion_onnx = None
        if champion_ref and champion_ref.version:
            champion_onnx = registry.fetch(champion_ref.version, ONNX_FILE, Path(tmp) / ONNX_FILE)
        if rollout is None:
            traffic, traffic_batches = recent_traffic(store, config.dataset, config.traffic_rows)
            analysis = {
                **canary_analysis(challenger_dir / ONNX_FILE, champion_onnx, traffic, config),
                "traffic_batches": traffic_batches,
            }
        else:
            analysis = rollout.analyse(registry, version, champion_onnx, config)
    guard()
    decision = _apply(registry, version, champion_ref, card, analysis, run_id)
    if rollout is not None:
        rollout.finish(decision["decision"])
    record = {
        "run_id": run_id,
        "model": config.model_name,
        "version": version,
        "decided_at": utc_now(),
        "target": "local" if rollout is None else "kserve",
        "previous_champion": champion_ref.version if champion_ref else None,
        **decision,
        "analysis": analysis,
    }
    store.put_json(f"runs/{run_id}/decision.json", record)
    return record


def _apply(registry: Registry, version: str, champion_ref, card: dict, analysis: dict, run_id: str) -> dict:
    current = champion_ref.version if champion_ref else None
    if card.get("parent_version") != current:
        outcome = {
            "decision": "rollback",
            "reason": f"champion moved to {current} while this run trained "
            f"from {card.get('parent_version')}; re-run to compare against it",
        }
    elif analysis["decision"] == "promote":
        won = registry.promote(version, champion_ref, run_id=run_id, reason=analysis["reason"])
        outcome = (
            {"decision": "promote", "reason": analysis["reason"]}
            if won
            else {"decision": "rollback", "reason": "another run moved the champion first (compare-and-swap lost)"}
        )
    else:
        outcome = {"decision": "rollback", "reason": analysis["reason"]}
    registry.move_alias(CANARY, None, registry.alias(CANARY), run_id=run_id, reason=f"canary {outcome['decision']}")
    return outcome
