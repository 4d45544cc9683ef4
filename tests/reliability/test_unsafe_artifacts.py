"""Model files carrying pickle payloads are refused without executing anything.

The payload, when unpickled, creates a sentinel file; the control test shows it really does.
Every other test then feeds it to a loader the pipeline uses and checks the sentinel is absent.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as safetensors_bytes

from components._shared.errors import UnsafeArtifactError
from components._shared.registry import CHAMPION, Registry
from components._shared.store import LocalStore, sha256_bytes

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this touches ``path``: a stand-in for arbitrary code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.fixture
def sentinel(tmp_path) -> Path:
    return tmp_path / "sentinel-payload-ran"


def _pickle(sentinel: Path) -> bytes:
    return pickle.dumps({"weight": _Payload(sentinel)}, protocol=4)


def _torch_zip(sentinel: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": _Payload(sentinel)}, buffer)
    return buffer.getvalue()


def _object_npy(sentinel: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Payload(sentinel)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_control_the_payload_runs_when_unpickled(sentinel):
    pickle.loads(_pickle(sentinel))
    assert sentinel.exists()


def _plant(store: LocalStore, version: str, files: dict[str, bytes]) -> Registry:
    """A version written straight into the store (bypassing publish), card with true checksums:
    what an attacker with write access to the bucket could do."""
    prefix = f"models/digits/versions/{version}/"
    for name, data in files.items():
        store.put_bytes(prefix + name, data)
    store.put_json(prefix + "card.json", {"version": version, "files": {n: sha256_bytes(d) for n, d in files.items()}})
    registry = Registry(store, "digits")
    assert registry.move_alias(CHAMPION, version, registry.alias(CHAMPION))
    return registry


@pytest.mark.parametrize("make", [_pickle, _torch_zip], ids=["pickle", "torch-zip"])
def test_safetensors_that_is_a_pickle_is_refused_by_fetch(local_store, tmp_path, sentinel, make):
    registry = _plant(local_store, "evil", {"model.safetensors": make(sentinel), "meta.json": b"{}"})
    dest = tmp_path / "fetched" / "model.safetensors"
    with pytest.raises(UnsafeArtifactError) as caught:
        registry.fetch("evil", "model.safetensors", dest)
    assert caught.value.code == "ARTIFACT_UNSAFE"
    assert not dest.exists() and not sentinel.exists()


@pytest.mark.parametrize("make", [_pickle, _torch_zip], ids=["pickle", "torch-zip"])
def test_warm_start_from_a_pickled_champion_runs_nothing(local_store, tmp_path, sentinel, make):
    """The training step's own path: fetch the champion's weights from the registry."""
    from components.train.config import TrainConfig
    from components.train.core import _champion_files

    _plant(local_store, "evil", {"model.safetensors": make(sentinel), "meta.json": b"{}"})
    config = TrainConfig(
        store_uri=local_store.uri,
        fingerprint="f",
        out_dir=str(tmp_path / "out"),
        init="auto",
        init_version="evil",
        model_name="digits",
        checkpoint_every=0,
    )
    with pytest.raises(UnsafeArtifactError):
        _champion_files(local_store, config, tmp_path / "init")
    assert not sentinel.exists()


def test_safetensors_loader_never_unpickles(tmp_path, sentinel):
    """Even handed a pickle directly, the weights loader the pipeline uses cannot run it."""
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    path.write_bytes(_pickle(sentinel))
    with pytest.raises(Exception) as caught:
        load_file(str(path))
    assert "SafetensorError" in type(caught.value).__name__ or "header" in str(caught.value).lower()
    assert not sentinel.exists()


def test_torch_load_weights_only_refuses_the_payload(tmp_path, sentinel):
    """The rule for any torch.load: weights_only=True, whose unpickler refuses unknown globals."""
    path = tmp_path / "model.pt"
    path.write_bytes(_torch_zip(sentinel))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not sentinel.exists()


def test_every_torch_load_in_the_code_is_weights_only():
    calls = []
    for path in [*ROOT.glob("components/**/*.py"), *ROOT.glob("pipelines/**/*.py")]:
        for match in re.finditer(r"torch\.load\((.*?)\)", path.read_text(), re.S):
            calls.append((path.name, "weights_only=True" in match.group(1)))
    assert all(ok for _, ok in calls), calls
    assert not any(
        re.search(r"\bpickle\.loads?\(|allow_pickle\s*=\s*True", p.read_text())
        for p in [*ROOT.glob("components/**/*.py"), *ROOT.glob("pipelines/**/*.py")]
    )


def test_model_pt_in_a_version_dir_is_refused(local_store, tmp_path, sentinel):
    registry = _plant(local_store, "evil", {"model.pt": _torch_zip(sentinel)})
    with pytest.raises(UnsafeArtifactError):
        registry.fetch("evil", "model.pt", tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists() and not sentinel.exists()


def test_publish_refuses_pickles_and_unknown_formats(local_store, tmp_path, sentinel):
    registry = Registry(local_store, "digits")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(_pickle(sentinel))
    with pytest.raises(UnsafeArtifactError):
        registry.publish("v1", {"model.safetensors": weights}, {})
    legacy = tmp_path / "model.pt"
    legacy.write_bytes(safetensors_bytes({"w": np.zeros(4, np.float32)}))  # the name alone is refused
    with pytest.raises(UnsafeArtifactError):
        registry.publish("v2", {"model.pt": legacy}, {})
    assert registry.versions() == [] and local_store.list("models/") == []
    assert not sentinel.exists()


def test_pickled_reference_array_is_refused(local_store, tmp_path, sentinel):
    registry = _plant(local_store, "evil", {"reference.npy": _object_npy(sentinel)})
    with pytest.raises(UnsafeArtifactError):
        registry.fetch("evil", "reference.npy", tmp_path / "reference.npy")
    # validate-data (and the drift monitor) read the champion's reference through the same check.
    from components.validate_data.core import load_champion

    with pytest.raises(UnsafeArtifactError):
        load_champion(local_store, "digits")
    assert not sentinel.exists()


def test_plain_artifacts_still_load(local_store, tmp_path):
    """The checks refuse pickles, not ordinary weights and arrays."""
    buffer = io.BytesIO()
    np.save(buffer, np.ones((3, 4)), allow_pickle=False)
    weights = safetensors_bytes({"w": np.arange(6, dtype=np.float32)})
    registry = _plant(
        local_store,
        "good",
        {"model.safetensors": weights, "reference.npy": buffer.getvalue(), "meta.json": b'{"arch": "small_cnn"}'},
    )
    for name in ("model.safetensors", "reference.npy", "meta.json"):
        assert registry.fetch("good", name, tmp_path / name).exists()
