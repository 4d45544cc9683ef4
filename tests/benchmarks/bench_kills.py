"""Kill-and-resume at scale: one unkilled 2-process torchrun run, then KILLS runs that each SIGKILL
worker rank 1 once, right after a seeded step (all steps distinct). torchrun (--max-restarts=1)
restarts the worker group, which resumes from the newest complete checkpoint in the store.

Per run: did it complete; steps redone (the kill step minus the step resumed from; goal <= one
checkpoint interval); final test accuracy vs the unkilled run (goal within 0.5 point); and
whether the final weights are bit-identical to the unkilled run's (the loop promises an exact
resume: same batches, same RNG).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
import time
from pathlib import Path

KILLS = 20
SEED = 17
EPOCHS = 2
EVERY = 10  # checkpoint_every: the lost-work budget


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def prepare(root: Path):
    """A seeded store with a snapshot; returns (store, fingerprint, test split)."""
    from components._shared.sampledata import SeedConfig, seed_digits
    from components._shared.snapshot import load_split
    from components._shared.store import LocalStore
    from components.ingest.config import IngestConfig
    from components.ingest.core import ingest

    store = LocalStore(root / "store")
    seed_digits(store, SeedConfig(batches=2))
    fingerprint = ingest(store, IngestConfig()).fingerprint
    return store, fingerprint, load_split(store, fingerprint, "test")


def train_run(store, fingerprint: str, root: Path, name: str, kill_at: int | None) -> dict:
    """One torchrun launch (2 workers, one restart allowed). Returns what the run left."""
    import json

    from components._shared.errors import CtpError
    from components._shared.model.files import META_FILE, WEIGHTS_FILE
    from components.train.config import TrainConfig
    from components.train.torchrun import launch

    config = TrainConfig(
        store_uri=store.uri,
        fingerprint=fingerprint,
        out_dir=str(root / name),
        epochs=EPOCHS,
        run_id=name,
        checkpoint_every=EVERY,
    )
    config.save(root / f"{name}.json")
    marker = root / f"{name}.killed"
    fault = {"CTP_FAULT_KILL_AT_STEP": str(kill_at), "CTP_FAULT_MARKER": str(marker)} if kill_at else {}
    started = time.perf_counter()
    try:
        with _env(**fault):
            launch(root / f"{name}.json", nproc_per_node=2, max_restarts=1)
    except CtpError:
        return {"completed": False, "seconds": time.perf_counter() - started, "killed": marker.exists()}
    meta = json.loads((root / name / META_FILE).read_text())
    return {
        "completed": True,
        "seconds": time.perf_counter() - started,
        "killed": marker.exists(),
        "steps": meta["steps"],
        "resumed_from": meta["checkpoints"]["resumed_from_step"],
        "restarts": meta["checkpoints"]["restart_count"],
        "weights_sha256": hashlib.sha256((root / name / WEIGHTS_FILE).read_bytes()).hexdigest(),
        "model_dir": root / name,
    }


def accuracy(model_dir: Path, split) -> float:
    from components._shared.model.files import ONNX_FILE
    from components._shared.model.serving import onnx_probabilities

    return float((onnx_probabilities(model_dir / ONNX_FILE, split.images).argmax(1) == split.labels).mean())


def kill_steps(total_steps: int, kills: int = KILLS, seed: int = SEED) -> list[int]:
    """Distinct seeded steps in 1..total_steps-1 (a kill after the last step would end nothing)."""
    return sorted(random.Random(seed).sample(range(1, total_steps), min(kills, total_steps - 1)))


def run(kills: int = KILLS) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store, fingerprint, test = prepare(root)
        whole = train_run(store, fingerprint, root, "whole", None)
        whole_acc = accuracy(whole["model_dir"], test)
        rows = []
        for i, step in enumerate(kill_steps(whole["steps"], kills)):
            result = train_run(store, fingerprint, root, f"kill-{i:02d}", step)
            result["kill_at"] = step
            if result["completed"]:
                result["lost"] = step - (result["resumed_from"] or 0)
                result["accuracy"] = accuracy(result["model_dir"], test)
                result["exact"] = result["weights_sha256"] == whole["weights_sha256"]
            rows.append(result)
    return report(whole, whole_acc, rows)


def report(whole: dict, whole_acc: float, rows: list[dict]) -> dict:
    print(
        f"unkilled run: {whole['steps']} steps, checkpoint every {EVERY}, test accuracy {whole_acc:.4f}, "
        f"{whole['seconds']:.1f} s"
    )
    header = ("kill after step", "completed", "restarts", "resumed from", "steps redone", "accuracy", "bit-exact", "s")
    table = [header]
    for r in rows:
        done = r["completed"]
        table.append(
            (
                str(r["kill_at"]),
                "yes" if done else "NO",
                str(r["restarts"]) if done else "-",
                ("start" if r["resumed_from"] is None else str(r["resumed_from"])) if done else "-",
                str(r["lost"]) if done else "-",
                f"{r['accuracy']:.4f}" if done else "-",
                ("yes" if r["exact"] else "no") if done else "-",
                f"{r['seconds']:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    done = [r for r in rows if r["completed"]]
    killed = sum(r["killed"] for r in rows)
    max_lost = max((r["lost"] for r in done), default=None)
    max_gap = max((abs(r["accuracy"] - whole_acc) for r in done), default=None)
    exact = sum(r["exact"] for r in done)
    print(f"kills fired: {killed}/{len(rows)} (goal >= 20 at distinct steps)")
    print(f"runs completed: {len(done)}/{len(rows)} (goal: all)")
    print(f"max steps redone: {max_lost} vs checkpoint interval {EVERY} (goal <= {EVERY})")
    gap = f"{max_gap * 100:.2f}" if max_gap is not None else "-"
    print(f"max accuracy gap vs unkilled: {gap} points (goal <= 0.5)")
    print(f"bit-identical final weights: {exact}/{len(done)}")
    return {
        "kills": killed,
        "completed": len(done),
        "runs": len(rows),
        "max_lost_steps": max_lost,
        "checkpoint_every": EVERY,
        "max_accuracy_gap": max_gap,
        "bit_exact": exact,
    }


if __name__ == "__main__":
    run()
