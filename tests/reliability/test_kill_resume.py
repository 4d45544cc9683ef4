"""A worker SIGKILLed mid-run costs at most one checkpoint interval, and the run still finishes
with the weights an uninterrupted run ends with, bit for bit.

The kill comes from the documented test hook in components/train/faults.py (``FaultPlan``): with
CTP_FAULT_KILL_AT_STEP=n, rank 1 kills itself with SIGKILL right after step n, once (a marker
file records that it happened). torchrun (--max-restarts=1) then restarts the worker group,
which resumes from the newest complete checkpoint in the store. Two kills here: right after a
checkpoint (nothing redone) and just before one (the most redone, EVERY - 1 steps);
tests/benchmarks/bench_kills.py runs 20 at seeded steps.
"""

import hashlib
import json

import pytest

from components._shared.model.files import META_FILE, ONNX_FILE, WEIGHTS_FILE
from components._shared.model.serving import onnx_probabilities
from components._shared.snapshot import load_split
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.train.config import TrainConfig
from components.train.torchrun import launch

EVERY = 10
KILLS = (20, 29)  # after the checkpoint at 20 (0 steps redone); before the one at 30 (9 redone)


def _run(store, fingerprint, tmp_path, name: str) -> dict:
    config = TrainConfig(
        store_uri=store.uri,
        fingerprint=fingerprint,
        out_dir=str(tmp_path / name),
        epochs=2,
        run_id=name,
        checkpoint_every=EVERY,
    )
    config.save(tmp_path / f"{name}.json")
    launch(tmp_path / f"{name}.json", nproc_per_node=2, max_restarts=1)
    return json.loads((tmp_path / name / META_FILE).read_text())


def _accuracy(model_dir, split) -> float:
    return float((onnx_probabilities(model_dir / ONNX_FILE, split.images).argmax(1) == split.labels).mean())


def _weights(model_dir) -> str:
    return hashlib.sha256((model_dir / WEIGHTS_FILE).read_bytes()).hexdigest()


@pytest.mark.slow
def test_sigkilled_worker_resumes_from_the_last_checkpoint_and_ends_as_an_uninterrupted_run(
    seeded_store, tmp_path, monkeypatch
):
    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    whole = _run(seeded_store, fingerprint, tmp_path, "whole")
    assert whole["checkpoints"]["resumed_from_step"] is None and whole["steps"] > max(KILLS)
    test = load_split(seeded_store, fingerprint, "test")
    for kill_at in KILLS:
        name = f"killed-{kill_at}"
        marker = tmp_path / f"{name}.marker"
        monkeypatch.setenv("CTP_FAULT_KILL_AT_STEP", str(kill_at))
        monkeypatch.setenv("CTP_FAULT_MARKER", str(marker))
        killed = _run(seeded_store, fingerprint, tmp_path, name)

        assert marker.exists(), f"the fault hook never fired at step {kill_at}"
        assert killed["world_size"] == 2 and killed["steps"] == whole["steps"]
        assert killed["checkpoints"]["restart_count"] == 1
        resumed = killed["checkpoints"]["resumed_from_step"]
        assert resumed == kill_at // EVERY * EVERY, "not the newest checkpoint before the kill"
        assert kill_at - resumed < EVERY
        assert _weights(tmp_path / name) == _weights(tmp_path / "whole"), f"kill at {kill_at}: not bit-exact"
        assert abs(_accuracy(tmp_path / name, test) - _accuracy(tmp_path / "whole", test)) <= 0.005
