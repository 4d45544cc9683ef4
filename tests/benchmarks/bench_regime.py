"""The continual regime: a large history and a small shifted new batch, side by side in one run.

A champion trained on a history of HISTORY_ROWS labelled rows (seeded affine variants of the 8x8
digits: rotation +-12 deg, scale, shear, sub-pixel shift) meets a new batch of 10% as many rows,
rotated a further ROTATION degrees (a covariate shift). Compared, for every seed in SEEDS:

- scratch: retrain on everything (history + new), the pipeline's training settings;
- warm + replay: the champion fine-tuned on the new batch plus a replay of the history, chosen by
  ingest itself (a registered champion's watermark; ``replay_ratio`` x the new rows as one share
  of every class, REPLAY_AUTO, the pipeline's default), and the smallest replay with distillation
  from the champion.

Same learning rate, batch size, epochs and (constant) schedule for all. Reported: optimizer steps
and training seconds until both the old and the new test slice reach (scratch's mean final
accuracy - 1 point), warm / scratch; forgetting on the old slice (champion - warm final); the new
slice's final accuracy vs scratch's. Goals: <= 0.2x of scratch's compute, <= 0.5 point
forgetting, new slice within 1 point of scratch. The cost of a whole default run (all its epochs)
is printed too: that is what the pipeline pays, since it does not stop at a target.

About 9 CPU-minutes on one thread (28 min on a 2-core machine shared with other work).

Test slices: fresh variants (another seed) of the digits whose every variant sits on ingest's
test side (split-aligned ids, as bench_training), so no near-duplicate of a test digit trains.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.ndimage import map_coordinates

from components._shared.dataset import is_test_example
from components._shared.model.files import META_FILE, WEIGHTS_FILE
from components._shared.model.network import build_model
from components._shared.registry import CHAMPION, Registry, new_version_id
from components._shared.sampledata import batch_table, load_digits_uint8
from components._shared.snapshot import Split, read_manifest
from components._shared.store import LocalStore
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.train import checkpoint
from components.train.config import TrainConfig
from components.train.core import train
from tests.benchmarks.bench_training import _accuracy
from tests.helpers import write_batch

HISTORY_ROWS, HISTORY_BATCHES, NEW_SHARE = 20_000, 10, 0.1  # 16,000 of them train (test_fraction 0.2)
TEST_FRACTION = IngestConfig.test_fraction
JITTER_DEG, ROTATION = 12.0, 35.0  # the history's rotation jitter; the new batch's extra rotation
EVAL_ROWS = 2000  # per test slice
SEEDS = (0, 1, 2)
EVERY = 20  # optimizer steps between checkpoints: the resolution of "steps to target"
RATIOS = (0.5, 1.0, 2.0)  # replay_ratio: old rows replayed per new row
DISTILLED = ((0.5, 0.1),)  # (replay_ratio, distill weight)
GOALS = {"compute": 0.2, "forgetting": 0.5, "new": 1.0}


def variants(images: np.ndarray, sources: np.ndarray, rotation: float, rng: np.random.Generator) -> np.ndarray:
    """One seeded affine variant of ``images[s]`` for every s in ``sources`` (bilinear, one call)."""
    n = len(sources)
    angle = np.deg2rad(rotation + rng.uniform(-JITTER_DEG, JITTER_DEG, n))
    scale, shear, shift = rng.uniform(0.9, 1.1, n), rng.uniform(-0.15, 0.15, n), rng.uniform(-0.6, 0.6, (n, 2))
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.stack([np.stack([cos, cos * shear - sin], -1), np.stack([sin, sin * shear + cos], -1)], 1)
    inverse = np.linalg.inv(forward * scale[:, None, None])  # output pixel -> input pixel
    grid = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), -1).reshape(-1, 2) - 3.5
    coords = np.einsum("nij,npj->npi", inverse, grid - shift[:, None, :]) + 3.5  # (n, 64, 2)
    stack = np.broadcast_to(np.arange(n, dtype=float)[:, None], (n, 64))
    warped = map_coordinates(
        images[sources, :, :, 0].astype(np.float32), [stack, coords[..., 0], coords[..., 1]], order=1, cval=0.0
    )
    return np.clip(np.round(warped), 0, 255).astype(np.uint8).reshape(n, 8, 8, 1)


def _split_aligned_id(name: str, is_test: bool) -> str:
    salt = 0
    while is_test_example(f"{name}-{salt}", TEST_FRACTION) != is_test:
        salt += 1
    return f"{name}-{salt}"


def _rows(images, labels, digit_is_test, count: int, rotation: float, name: str, rng) -> tuple[np.ndarray, ...]:
    sources = np.arange(count) % len(labels)
    ids = [_split_aligned_id(f"{name}-{s}-{n}", bool(digit_is_test[s])) for n, s in enumerate(sources)]
    return variants(images, sources, rotation, rng), labels[sources], ids


def build_data(store) -> dict:
    """History batches 0000..., then the new batch; the in-memory test slices."""
    images, labels = load_digits_uint8()
    digit_is_test = np.array([is_test_example(f"digit-{i}", TEST_FRACTION) for i in range(len(labels))])
    rng = np.random.default_rng(0)
    x, y, ids = _rows(images, labels, digit_is_test, HISTORY_ROWS, 0.0, "h", rng)
    history = [f"{n:04d}" for n in range(HISTORY_BATCHES)]
    for batch, part in zip(history, np.array_split(np.arange(HISTORY_ROWS), HISTORY_BATCHES)):
        write_batch(store, batch_table(x[part], y[part], [ids[i] for i in part]), batch)
    new = _rows(images, labels, digit_is_test, int(HISTORY_ROWS * NEW_SHARE), ROTATION, "n", rng)
    test_digits = np.flatnonzero(digit_is_test)
    sources = test_digits[np.arange(EVAL_ROWS) % len(test_digits)]
    eval_rng = np.random.default_rng(1)
    slices = {
        name: Split(variants(images, sources, rotation, eval_rng), labels[sources], [], [])
        for name, rotation in (("old", 0.0), ("new", ROTATION))
    }
    return {"history": history, "new": new, "test": slices}


def publish_champion(store, model_dir: Path, batches: list[str]) -> None:
    """The champion's card with its watermark (data.batches): what ingest reads for the replay."""
    registry, version = Registry(store, IngestConfig.model_name), new_version_id()
    registry.publish(version, {META_FILE: model_dir / META_FILE}, {"data": {"batches": batches}})
    registry.promote(version, registry.alias(CHAMPION), run_id="bench", reason="bench champion")


def _train(store, fingerprint: str, out: Path, run_id: str, **overrides) -> dict:
    settings = {"run_id": run_id, "checkpoint_every": EVERY, "keep_checkpoints": 0, **overrides}
    return train(TrainConfig(store_uri=store.uri, fingerprint=fingerprint, out_dir=str(out), **settings))


def evaluate(model_state: dict, meta: dict, test: dict) -> dict:
    model = build_model(meta["arch"], meta["image_shape"], meta["num_classes"])
    model.load_state_dict(model_state)
    model.eval()
    return {name: _accuracy(model, split) for name, split in test.items()}


def final_point(out: Path, meta: dict, test: dict) -> dict:
    return {
        "seconds": meta["train_seconds"],
        "step": meta["steps"],
        **evaluate(load_file(out / WEIGHTS_FILE), meta, test),
    }


def reach(store, run: dict, targets: dict, test: dict) -> dict:
    """Steps and training seconds at the first checkpoint (or the end) where every slice reaches
    its target; inf if none. Checkpoints after that one are not evaluated."""
    for step in sorted(checkpoint.complete_steps(store, run["run_id"])):
        groups, state = checkpoint.load(store, run["run_id"], step)
        if all(a >= targets[name] for name, a in evaluate(groups["model"], run["meta"], test).items()):
            return {"step": step, "seconds": state["progress"]["train_seconds"]}
    if all(run["final"][name] >= target for name, target in targets.items()):
        return {"step": run["final"]["step"], "seconds": run["final"]["seconds"]}
    return {"step": float("inf"), "seconds": float("inf")}


def plans(windows: dict, champion: Path) -> dict:
    warm = {"init": "warm", "init_weights": str(champion / WEIGHTS_FILE), "init_meta": str(champion / META_FILE)}
    return {
        "scratch": (windows["everything"], {"init": "scratch"}),
        **{f"warm+replay x{r:g}": (windows[r], warm) for r in RATIOS},
        **{f"warm+replay x{r:g}+kd {d:g}": (windows[r], {**warm, "distill": d}) for r, d in DISTILLED},
    }


def continual(store, root: Path, data: dict) -> dict:
    """The champion; every plan for every seed; then the targets from scratch's finals and each
    run's steps to them."""
    test = data["test"]
    first = ingest(store, IngestConfig(replay_fraction=1.0)).fingerprint
    champion = _train(store, first, root / "champion", "champion", init="scratch", checkpoint_every=0)
    champion_points = final_point(root / "champion", champion, test)
    publish_champion(store, root / "champion", data["history"])
    x, y, ids = data["new"]
    write_batch(store, batch_table(x, y, ids), f"{HISTORY_BATCHES:04d}")
    windows = {"everything": ingest(store, IngestConfig(replay_fraction=1.0)).fingerprint}
    for ratio in RATIOS:
        windows[ratio] = ingest(store, IngestConfig(replay_ratio=ratio)).fingerprint
    rows = {key: read_manifest(store, fp)["objects"]["train.parquet"]["rows"] for key, fp in windows.items()}
    runs: dict[str, list] = {}
    for seed in SEEDS:
        for name, (fingerprint, init) in plans(windows, root / "champion").items():
            run_id = f"{name.replace(' ', '_')}-seed{seed}"
            meta = _train(store, fingerprint, root / run_id, run_id, seed=seed, **init)
            final = final_point(root / run_id, meta, test)
            runs.setdefault(name, []).append({"run_id": run_id, "meta": meta, "final": final})
            print(f"  {run_id}: {meta['steps']} steps, final old {final['old']:.4f} new {final['new']:.4f}", flush=True)
    targets = {s: _mean(r["final"][s] for r in runs["scratch"]) - 0.01 for s in test}
    for seeds in runs.values():
        for run in seeds:
            run["reach"] = reach(store, run, targets, test)
    return {"runs": runs, "champion": champion_points, "targets": targets, "rows": rows}


def _mean(values) -> float:
    return statistics.fmean(values)


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = LocalStore(root / "store")
        # One thread: OpenMP's spinning threads slow a small CNN many-fold on a busy 2-core machine.
        torch.set_num_threads(1)
        data = build_data(store)
        print(
            f"history {HISTORY_ROWS} rows in {HISTORY_BATCHES} batches, new batch {len(data['new'][1])} rows rotated "
            f"{ROTATION:g} deg; test slices {EVAL_ROWS} + {EVAL_ROWS}; seeds {SEEDS}; checkpoint every {EVERY} steps",
            flush=True,
        )
        result = continual(store, root, data)
    report(result)


def report(result: dict) -> None:
    runs, targets, champion = result["runs"], result["targets"], result["champion"]
    print(
        f"\nchampion (history only): old {champion['old']:.4f}  new {champion['new']:.4f}; train rows: "
        + ", ".join(f"{k if isinstance(k, str) else f'x{k:g}'} {v}" for k, v in result["rows"].items())
    )
    print(f"targets (mean scratch final - 1 point): old {targets['old']:.4f}  new {targets['new']:.4f}")
    print(f"{'run':<24} {'final old':>9} {'final new':>9} {'steps':>6} {'train s':>8} {'steps to target':>22}")

    def mean(name: str, *path: str) -> float:
        values = []
        for run in runs[name]:
            value = run
            for key in path:
                value = value[key]
            values.append(value)
        return _mean(values)

    for name, seeds in runs.items():
        print(
            f"{name:<24} {mean(name, 'final', 'old'):>9.4f} {mean(name, 'final', 'new'):>9.4f} "
            f"{mean(name, 'final', 'step'):>6.0f} {mean(name, 'final', 'seconds'):>8.2f} "
            f"{' '.join(format(r['reach']['step'], 'g') for r in seeds):>22}"
        )
    print(f"\n{'measure':<66} {'value':>8} {'goal':>8}  met")
    for name in runs:
        if name == "scratch":
            continue
        for label, value, goal in (
            (
                "steps to target, warm / scratch",
                mean(name, "reach", "step") / mean("scratch", "reach", "step"),
                "compute",
            ),
            (
                "seconds to target, warm / scratch",
                mean(name, "reach", "seconds") / mean("scratch", "reach", "seconds"),
                "compute",
            ),
            ("whole run's steps, warm / scratch", mean(name, "final", "step") / mean("scratch", "final", "step"), None),
            (
                "forgetting on the old slice vs champion (points)",
                100 * (champion["old"] - mean(name, "final", "old")),
                "forgetting",
            ),
            (
                "new slice: scratch - warm final (points)",
                100 * (mean("scratch", "final", "new") - mean(name, "final", "new")),
                "new",
            ),
        ):
            met = "-" if goal is None else ("yes" if value <= GOALS[goal] else "NO")
            shown = "(info)" if goal is None else f"<= {GOALS[goal]:g}"
            print(f"{name + ': ' + label:<66} {value:>8.3f} {shown:>8}  {met}")
