"""Procedural RGB photos-in-miniature for tests and benchmarks: seeded, any size, classes a CNN
separates in a couple of epochs and that flips and small shifts do not change: a disk anywhere or
stripes of either orientation, each class in its own colour family (jittered) on a dark random
background, with sensor-like noise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CLASSES = ("disk", "hstripes", "vstripes")
HUES = np.array([(220, 90, 60), (80, 200, 90), (90, 110, 230)])  # each class's colour, as in real classes


def shape_image(label: str, rng: np.random.Generator, side: int = 64) -> np.ndarray:
    """One (side, side, 3) uint8 image of class ``label``."""
    y, x = np.mgrid[0:side, 0:side]
    half = max(1, side * int(rng.integers(6, 13)) // 64)  # stripe half-period: 6..12 px at 64x64
    if label == "disk":
        cy, cx = rng.integers(side // 4, side - side // 4, 2)
        radius = side * rng.uniform(0.12, 0.25)
        mask = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
    elif label in ("hstripes", "vstripes"):
        mask = ((y if label == "hstripes" else x) + int(rng.integers(0, 2 * half))) // half % 2 == 0
    else:
        raise ValueError(f"no procedural class {label!r}; have {CLASSES}")
    fg = np.clip(HUES[CLASSES.index(label)] + rng.integers(-50, 51, 3), 0, 255)  # the class's colour family
    bg = rng.integers(0, 96, 3)  # a darker background of any colour
    image = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (side, side, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    sink = io.BytesIO()
    Image.fromarray(image).save(sink, format="JPEG", quality=quality)
    return sink.getvalue()


def shape_jpegs(count: int, side: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    """``count`` JPEGs cycling through the classes, and their class indices."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASSES)
    return [jpeg(shape_image(CLASSES[label], rng, side)) for label in labels], labels


def image_folder(root: Path, per_class: int, side: int = 64, seed: int = 0) -> Path:
    """torchvision's ImageFolder layout: root/<class>/<n>.jpg."""
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            (root / label / f"{n:04d}.jpg").write_bytes(jpeg(shape_image(label, rng, side)))
    return root
