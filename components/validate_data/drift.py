"""Drift tests with alibi-detect. Imported lazily: `import alibi_detect.cd` costs seconds."""

from __future__ import annotations

import numpy as np

FEATURE_SIDE = 8  # images are pooled to 8x8 grayscale: 64 features, cheap for KS
MIN_ROWS = 30


def features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, 64) float32: grayscale, average-pooled to 8x8, scaled to 0..1."""
    gray = images.astype(np.float32).mean(axis=3) / 255.0
    n, h, w = gray.shape
    if (h, w) == (FEATURE_SIDE, FEATURE_SIDE):
        return gray.reshape(n, -1)
    import torch
    import torch.nn.functional as F

    pooled = F.adaptive_avg_pool2d(torch.from_numpy(gray)[:, None], FEATURE_SIDE)
    return pooled.reshape(n, -1).numpy()


def ks_drift(reference: np.ndarray, window: np.ndarray, p_val: float = 0.05) -> dict:
    """Feature-wise Kolmogorov-Smirnov with Bonferroni correction (alibi-detect KSDrift)."""
    base = {"test": "ks", "p_val": p_val, "correction": "bonferroni",
            "n_reference": int(len(reference)), "n_window": int(len(window))}
    if len(reference) < MIN_ROWS or len(window) < MIN_ROWS:
        return {**base, "decision": "insufficient_data", "is_drift": False,
                "reason": f"need at least {MIN_ROWS} rows on each side"}
    from alibi_detect.cd import KSDrift

    detector = KSDrift(reference.astype(np.float32), p_val=p_val, correction="bonferroni")
    data = detector.predict(window.astype(np.float32), return_p_val=True, return_distance=True)["data"]
    p_vals = np.asarray(data["p_val"], dtype=float)
    is_drift = bool(data["is_drift"])
    return {
        **base,
        "decision": "drift" if is_drift else "no_drift",
        "is_drift": is_drift,
        "threshold": float(data["threshold"]),
        "min_p_val": float(p_vals.min()),
        "features_drifted": int((p_vals < data["threshold"]).sum()),
        "n_features": int(p_vals.size),
        "max_distance": float(np.max(data["distance"])),
    }
