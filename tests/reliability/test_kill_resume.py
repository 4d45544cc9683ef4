"""A worker SIGKILLed mid-run costs at most one checkpoint interval, and the run still finishes.

The kill comes from the documented test hook in components/train/core.py (``FaultPlan``): with
CTP_FAULT_KILL_AT_STEP=n, rank 1 kills itself with SIGKILL right after step n, once (a marker
file records that it happened). torchrun (--max-restarts=1) then restarts the worker group,
which resumes from the newest complete checkpoint in the store.
"""

import json

import pytest

from components._shared.model.files import META_FILE, ONNX_FILE
from components._shared.model.serving import onnx_probabilities
from components._shared.snapshot import load_split
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.train import checkpoint
from components.train.config import TrainConfig
from components.train.torchrun import launch

KILL_AT_STEP, EVERY = 25, 10


def _run(store, fingerprint, tmp_path, name: str) -> dict:
    config = TrainConfig(
        store_uri=store.uri,
        fingerprint=fingerprint,
        out_dir=str(tmp_path / name),
        epochs=3,
        run_id=name,
        checkpoint_every=EVERY,
        keep_checkpoints=0,
    )
    config.save(tmp_path / f"{name}.json")
    launch(tmp_path / f"{name}.json", nproc_per_node=2, max_restarts=1)
    return json.loads((tmp_path / name / META_FILE).read_text())


def _accuracy(model_dir, split) -> float:
    return float((onnx_probabilities(model_dir / ONNX_FILE, split.images).argmax(1) == split.labels).mean())


@pytest.mark.slow
def test_sigkilled_worker_resumes_from_the_last_checkpoint_and_matches_an_uninterrupted_run(
    seeded_store, tmp_path, monkeypatch
):
    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("CTP_FAULT_KILL_AT_STEP", str(KILL_AT_STEP))
    monkeypatch.setenv("CTP_FAULT_MARKER", str(marker))
    killed = _run(seeded_store, fingerprint, tmp_path, "killed")
    monkeypatch.delenv("CTP_FAULT_KILL_AT_STEP")
    whole = _run(seeded_store, fingerprint, tmp_path, "whole")

    assert marker.exists(), "the fault hook never fired"
    assert killed["steps"] > KILL_AT_STEP and killed["world_size"] == 2
    assert killed["checkpoints"]["restart_count"] == 1
    before_kill = [s for s in checkpoint.complete_steps(seeded_store, "killed") if s <= KILL_AT_STEP]
    assert killed["checkpoints"]["resumed_from_step"] == max(before_kill) == 20
    assert whole["checkpoints"]["resumed_from_step"] is None
    test = load_split(seeded_store, fingerprint, "test")
    assert abs(_accuracy(tmp_path / "killed", test) - _accuracy(tmp_path / "whole", test)) <= 0.005
