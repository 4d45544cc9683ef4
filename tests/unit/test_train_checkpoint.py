"""Checkpoints: blobs then manifest, resume from the newest complete one, exact continuation."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from components._shared.errors import ConfigError
from components._shared.model.files import WEIGHTS_FILE
from components._shared.model.network import SmallCNN
from components._shared.store import LocalStore
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.train import checkpoint
from tests.helpers import train_in_process


class SimulatedCrash(Exception):
    """The process dies here: raised from inside the store write it interrupts."""


def test_optimizer_and_rng_state_round_trip_without_pickles(local_store):
    model = SmallCNN(1, 10, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    optimizer.step()
    tensors, rest = checkpoint.optimizer_to_parts(optimizer.state_dict())
    rng_before = torch.get_rng_state()
    checkpoint.save(local_store, "r1", 7, {"optimizer": tensors, "rng": checkpoint.rng_tensors()}, {"optimizer": rest})
    torch.rand(100)  # move the RNG on
    groups, state = checkpoint.load(local_store, "r1", 7)
    checkpoint.restore_rng(groups["rng"])
    assert torch.equal(torch.get_rng_state(), rng_before)
    restored = torch.optim.Adam(model.parameters(), lr=1e-3)
    restored.load_state_dict(checkpoint.optimizer_from_parts(groups["optimizer"], state["optimizer"]))
    for param in model.parameters():
        a, b = optimizer.state[param], restored.state[param]
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    files = json.loads(local_store.get_bytes("checkpoints/r1/step-7/manifest.json"))["files"]
    assert sorted(files) == ["optimizer.safetensors", "rng.safetensors", "state.json"]


def test_a_corrupt_blob_is_an_integrity_error(local_store):
    from components._shared.errors import IntegrityError

    checkpoint.save(local_store, "r1", 3, {"model": {"w": torch.ones(3)}}, {})
    local_store.put_bytes("checkpoints/r1/step-3/state.json", b"{}\n\n")
    with pytest.raises(IntegrityError):
        checkpoint.load(local_store, "r1", 3)


def test_prune_keeps_the_newest_complete_checkpoints_and_drops_older_leftovers(local_store):
    local_store.put_bytes("checkpoints/r1/step-1/model.safetensors", b"half-written")  # no manifest
    for step in (2, 3, 4, 5):
        checkpoint.save(local_store, "r1", step, {"model": {"w": torch.full((2,), float(step))}}, {}, keep=2)
    local_store.put_bytes("checkpoints/r1/step-6/model.safetensors", b"crashed before its manifest")
    assert checkpoint.complete_steps(local_store, "r1") == [5, 4]
    assert checkpoint.latest_step(local_store, "r1") == 5
    assert local_store.list_dirs("checkpoints/r1") == ["step-4", "step-5", "step-6"]


def test_crash_between_blobs_and_manifest_resumes_from_the_previous_checkpoint(seeded_store, tmp_path, monkeypatch):
    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    settings = {"epochs": 2, "checkpoint_every": 10, "keep_checkpoints": 0}
    original_put_json = LocalStore.put_json

    def crash_before_second_manifest(store, key, obj, **kwargs):
        if key == "checkpoints/crashed/step-20/manifest.json":
            raise SimulatedCrash(key)
        return original_put_json(store, key, obj, **kwargs)

    monkeypatch.setattr(LocalStore, "put_json", crash_before_second_manifest)
    with pytest.raises(SimulatedCrash):
        train_in_process(seeded_store, fingerprint, tmp_path / "crashed", run_id="crashed", **settings)
    monkeypatch.undo()
    assert seeded_store.exists("checkpoints/crashed/step-20/model.safetensors")
    assert checkpoint.latest_step(seeded_store, "crashed") == 10

    resumed = train_in_process(seeded_store, fingerprint, tmp_path / "crashed", run_id="crashed", **settings)
    whole = train_in_process(seeded_store, fingerprint, tmp_path / "whole", run_id="whole", **settings)
    assert resumed["checkpoints"]["resumed_from_step"] == 10
    assert whole["checkpoints"]["resumed_from_step"] is None
    assert checkpoint.complete_steps(seeded_store, "crashed") == checkpoint.complete_steps(seeded_store, "whole")
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    a, b = load_file(str(tmp_path / "crashed" / WEIGHTS_FILE)), load_file(str(tmp_path / "whole" / WEIGHTS_FILE))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_a_checkpoint_of_a_different_training_is_refused(seeded_store, tmp_path):
    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    identity = {
        "fingerprint": "someone-else",
        "batch_size": 64,
        "lr": 0.002,
        "seed": 0,
        "init": "auto",
        "world_size": 1,
    }
    checkpoint.save(seeded_store, "taken", 10, {"model": {}}, {"identity": identity})
    with pytest.raises(ConfigError, match="different training"):
        train_in_process(seeded_store, fingerprint, tmp_path / "x", run_id="taken", checkpoint_every=10)


def test_checkpointing_needs_a_run_id():
    from components.train.config import TrainConfig

    with pytest.raises(ConfigError):
        TrainConfig(store_uri="s", fingerprint="f", out_dir="o", checkpoint_every=5)
