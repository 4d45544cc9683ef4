"""Training checkpoints in the store: ``checkpoints/<run-id>/step-<n>/``.

A checkpoint is tensor groups as safetensors (model, optimizer, RNG, best weights) plus
``state.json`` (step, epoch progress, history, optimizer hyperparameters), and ``manifest.json``
with the sha256 of each, written last: a step folder without a manifest is a crash leftover and
is never resumed from. Nothing is pickled.
"""

from __future__ import annotations

import json
import re

import torch

from components._shared.errors import IntegrityError
from components._shared.registry import utc_now
from components._shared.store import Store, json_bytes, sha256_bytes

MANIFEST, STATE = "manifest.json", "state.json"
_STEP_DIR = re.compile(r"step-(\d+)")


def run_prefix(run_id: str) -> str:
    return f"checkpoints/{run_id}/"


def step_prefix(run_id: str, step: int) -> str:
    return f"{run_prefix(run_id)}step-{step}/"


def _steps(store: Store, run_id: str) -> list[int]:
    """Every step folder, complete or not, newest first."""
    found = (_STEP_DIR.fullmatch(name) for name in store.list_dirs(run_prefix(run_id)))
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def complete_steps(store: Store, run_id: str) -> list[int]:
    """Steps whose manifest was written, newest first."""
    return [s for s in _steps(store, run_id) if store.exists(step_prefix(run_id, s) + MANIFEST)]


def latest_step(store: Store, run_id: str) -> int | None:
    steps = complete_steps(store, run_id)
    return steps[0] if steps else None


def save(
    store: Store, run_id: str, step: int, groups: dict[str, dict[str, torch.Tensor]], state: dict, *, keep: int = 0
) -> str:
    """Blobs first, then the manifest; then drop all but the newest ``keep`` (0: keep all)."""
    from safetensors.torch import save as to_bytes

    prefix = step_prefix(run_id, step)
    blobs = {
        f"{name}.safetensors": to_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        for name, tensors in groups.items()
    }
    blobs[STATE] = json_bytes(state)
    for name, data in blobs.items():
        store.put_bytes(prefix + name, data)
    store.put_json(
        prefix + MANIFEST,
        {"step": step, "created_at": utc_now(), "files": {name: sha256_bytes(data) for name, data in blobs.items()}},
    )
    if keep:
        prune(store, run_id, keep)
    return prefix


def load(store: Store, run_id: str, step: int) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a complete checkpoint, verifying every blob against its manifest."""
    from safetensors.torch import load as from_bytes

    prefix = step_prefix(run_id, step)
    manifest = store.get_json(prefix + MANIFEST)
    groups, state = {}, {}
    for name, digest in manifest["files"].items():
        data = store.get_bytes(prefix + name)
        if sha256_bytes(data) != digest:
            raise IntegrityError(
                f"{store.describe(prefix + name)} does not match its checkpoint manifest",
                hint=f"delete {store.describe(prefix)} to resume from the checkpoint before it",
            )
        if name == STATE:
            state = json.loads(data)
        else:
            groups[name.removesuffix(".safetensors")] = from_bytes(data)
    return groups, state


def prune(store: Store, run_id: str, keep: int) -> None:
    """Delete every step folder older than the newest ``keep`` complete ones, manifest first so a
    reader never takes a half-deleted checkpoint for a complete one."""
    complete = complete_steps(store, run_id)
    if len(complete) <= keep:
        return
    oldest_kept = complete[keep - 1]
    for step in (s for s in _steps(store, run_id) if s < oldest_kept):
        prefix = step_prefix(run_id, step)
        store.delete(prefix + MANIFEST)
        for key in store.list(prefix):
            store.delete(key)


# --- optimizer and RNG state as tensors + JSON (no pickles) --------------------------------------


def optimizer_to_parts(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``<param>.<name>``) and JSON-able rest."""
    tensors, scalars = {}, {}
    for param, values in state_dict["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param}.{name}"] = value
            else:
                scalars[f"{param}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_parts(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
