"""What the model sees, in numpy: the one preprocessing, and the pooled-pixel drift features."""

from __future__ import annotations

import numpy as np

FEATURE_SIDE = 8  # images are pooled to 8x8 grayscale: 64 features, cheap for KS


def to_array(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in 0..1: the model's input, in training and in ONNX use."""
    array = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    array /= np.float32(255.0)
    return array


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, 64) float32: grayscale, average-pooled to 8x8, scaled to 0..1."""
    gray = images.astype(np.float32).mean(axis=3) / 255.0
    n, h, w = gray.shape
    if (h, w) == (FEATURE_SIDE, FEATURE_SIDE):
        return gray.reshape(n, -1)
    import torch
    import torch.nn.functional as F

    pooled = F.adaptive_avg_pool2d(torch.from_numpy(gray)[:, None], FEATURE_SIDE)
    return pooled.reshape(n, -1).numpy()
