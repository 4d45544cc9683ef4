"""Sample data: scikit-learn's bundled digits as a stream of labelled batches plus traffic.

A shift (rotation, noise, class-prior change) can be applied from a given batch on, so drift
and retraining can be shown on a laptop with no downloads.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from components._shared.dataset import ID, LABEL, images_to_array, list_batches
from components._shared.errors import ConfigError
from components._shared.store import Store, parquet_bytes

SHIFTS = ("none", "rotation", "noise", "prior")


@dataclasses.dataclass(frozen=True)
class SeedConfig:
    dataset: str = "digits"
    batches: int = 4
    shift: str = "none"
    shift_from: int = 0  # index (within this seeding) of the first shifted batch
    strength: float = 1.0  # 1.0 = 30 degrees, noise std 40/255, or 90% of classes 0-4 dropped
    traffic_fraction: float = 0.2
    seed: int = 0
    append: bool = False

    def __post_init__(self):
        if self.shift not in SHIFTS:
            raise ConfigError(f"unknown shift {self.shift!r}", hint=f"choose one of {', '.join(SHIFTS)}")
        if self.batches < 1:
            raise ConfigError("batches must be at least 1")
        if not 0.0 < self.traffic_fraction < 1.0:
            raise ConfigError("traffic_fraction must be between 0 and 1")


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """Digits as (N, 8, 8, 1) uint8 images (0..255) and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images[..., None], digits.target.astype(np.int64)


def apply_shift(
    images: np.ndarray, labels: np.ndarray, shift: str, strength: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if shift == "rotation":
        from scipy.ndimage import rotate

        angle = 30.0 * strength
        rotated = rotate(images.astype(np.float32), angle, axes=(1, 2), reshape=False, order=1, mode="constant")
        return np.clip(rotated, 0, 255).astype(np.uint8), labels
    if shift == "noise":
        noisy = images.astype(np.float32) + rng.normal(0.0, 40.0 * strength, images.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8), labels
    if shift == "prior":
        drop = (labels < 5) & (rng.random(len(labels)) < 0.9 * min(strength, 1.0))
        return images[~drop], labels[~drop]
    return images, labels


def batch_table(images: np.ndarray, labels: np.ndarray | None, ids: list[str]) -> pa.Table:
    image_array, field = images_to_array(images)
    columns = [pa.array(ids, pa.string()), image_array]
    fields = [pa.field(ID, pa.string()), field]
    if labels is not None:
        columns.append(pa.array(labels, pa.int64()))
        fields.append(pa.field(LABEL, pa.int64()))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def seed_digits(store: Store, config: SeedConfig) -> dict[str, list[str]]:
    """Write ``config.batches`` labelled and traffic batches; returns the keys written per kind."""
    existing = list_batches(store, config.dataset)
    if existing and not config.append:
        raise ConfigError(
            f"{store.describe('datasets/' + config.dataset)} already has {len(existing)} batch(es)",
            hint="pass --append to add batches after them",
        )
    start = len(existing)
    rng = np.random.default_rng(config.seed + start)
    images, labels = load_digits_uint8()
    order = rng.permutation(len(labels))
    n_traffic = int(len(order) * config.traffic_fraction)
    parts = {"traffic": order[:n_traffic], "datasets": order[n_traffic:]}
    written: dict[str, list[str]] = {"datasets": [], "traffic": []}
    for kind, indices in parts.items():
        for offset, chunk in enumerate(np.array_split(indices, config.batches)):
            batch_index = start + offset
            x, y = images[chunk], labels[chunk]
            if config.shift != "none" and offset >= config.shift_from:
                x, y = apply_shift(x, y, config.shift, config.strength, rng)
            ids = [f"{config.dataset}-{batch_index:04d}-{i:05d}" for i in range(len(y))]
            table = batch_table(x, y if kind == "datasets" else None, ids)
            key = f"{kind}/{config.dataset}/batch={batch_index:04d}/part-0.parquet"
            store.put_bytes(key, parquet_bytes(table), create_only=True)
            written[kind].append(key)
    return written


@dataclasses.dataclass(frozen=True)
class Segment:
    """One shift of a multi-segment stream: active on steps [start, end), reaching full strength
    after ``ramp`` steps (1 = sudden). ``end`` None = until the end of the stream."""

    shift: str
    start: int
    end: int | None = None
    strength: float = 1.0
    ramp: int = 1

    def __post_init__(self):
        if self.shift not in SHIFTS[1:]:
            raise ConfigError(f"unknown stream shift {self.shift!r}", hint=f"choose one of {', '.join(SHIFTS[1:])}")
        if self.start < 0 or self.ramp < 1 or (self.end is not None and self.end <= self.start):
            raise ConfigError(
                f"segment {self.shift} has start {self.start}, end {self.end}, ramp {self.ramp}",
                hint="need 0 <= start < end and ramp >= 1",
            )

    def strength_at(self, step: int) -> float:
        if step < self.start or (self.end is not None and step >= self.end):
            return 0.0
        return self.strength * min(1.0, (step - self.start + 1) / self.ramp)


def stream_state(segments: tuple[Segment, ...] | list[Segment], step: int) -> dict[str, float]:
    """The strength of each shift kind at ``step``: the ground truth of what changed, and when."""
    state = dict.fromkeys(SHIFTS[1:], 0.0)
    for segment in segments:
        state[segment.shift] = max(state[segment.shift], segment.strength_at(step))
    return state


def stream_meta_key(dataset: str) -> str:
    return f"datasets/{dataset}/stream.json"


def seed_stream(
    store: Store,
    dataset: str,
    steps: int,
    segments: tuple[Segment, ...] | list[Segment],
    *,
    traffic_rows: int = 150,
    seed: int = 0,
) -> dict:
    """A stream of ``steps`` labelled batches (disjoint digits, no example repeats) plus traffic
    batches (drawn from a separate pool), each shifted by the segments active at its step.
    Writes ``stream.json`` (the segments) beside the batches; returns it."""
    if list_batches(store, dataset):
        raise ConfigError(
            f"{store.describe('datasets/' + dataset)} already has batches",
            hint="pick another dataset name or replay the existing stream",
        )
    images, labels = load_digits_uint8()
    order = np.random.default_rng(seed).permutation(len(labels))
    traffic_pool, labelled_pool = order[: len(order) // 5], order[len(order) // 5 :]
    for step, chunk in enumerate(np.array_split(labelled_pool, steps)):
        rng = np.random.default_rng([seed, step])
        traffic = rng.choice(traffic_pool, size=min(traffic_rows, len(traffic_pool)), replace=False)
        for kind, indices in (("datasets", chunk), ("traffic", traffic)):
            x, y = images[indices], labels[indices]
            for shift, strength in stream_state(segments, step).items():
                if strength > 0:
                    x, y = apply_shift(x, y, shift, strength, rng)
            ids = [f"{dataset}-{step:04d}-{i:05d}" for i in range(len(y))]
            table = batch_table(x, y if kind == "datasets" else None, ids)
            store.put_bytes(f"{kind}/{dataset}/batch={step:04d}/part-0.parquet", parquet_bytes(table), create_only=True)
    meta = {"dataset": dataset, "steps": steps, "seed": seed, "segments": [dataclasses.asdict(s) for s in segments]}
    store.put_json(stream_meta_key(dataset), meta, create_only=True)
    return meta
