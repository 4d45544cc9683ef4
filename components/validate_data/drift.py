"""Drift tests with alibi-detect, and the plot a person reads at a glance.

Imported lazily: `import alibi_detect.cd` costs seconds, so only the drift path pays for it.
Features are the champion's penultimate-layer embedding when there is one (validate-data and
the monitor pass them in), else downsampled pixels (8x8 grayscale, `model.inputs.pixel_features`); KS is the
decision, MMD on a bounded subsample is a second opinion, Chi-square tests the label distribution.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from components._shared.model.inputs import FEATURE_SIDE

EMBEDDING, PIXELS = "champion_embedding", "pooled_pixels"  # the representations drift is decided on
MIN_ROWS = 30
MMD_ROWS = 200  # per side: the permutation test is O(n^2) per permutation, so it is subsampled
MMD_PERMUTATIONS = 100
P_CAP = 20  # the plot's -log10 p axis stops here


def _too_few(base: dict, n_reference: int, n_window: int) -> dict | None:
    if n_reference < MIN_ROWS or n_window < MIN_ROWS:
        return {
            **base,
            "decision": "insufficient_data",
            "is_drift": False,
            "reason": f"need at least {MIN_ROWS} rows on each side",
        }
    return None


def ks_drift(reference: np.ndarray, window: np.ndarray, p_val: float = 0.05) -> dict:
    """Feature-wise Kolmogorov-Smirnov with Bonferroni correction (alibi-detect KSDrift)."""
    base = {
        "test": "ks",
        "p_val": p_val,
        "correction": "bonferroni",
        "n_reference": int(len(reference)),
        "n_window": int(len(window)),
    }
    too_few = _too_few(base, len(reference), len(window))
    if too_few:
        return too_few
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
        "p_vals": [float(p) for p in p_vals],
    }


@contextlib.contextmanager
def _seeded_single_thread_torch(seed: int):
    """The permutation test draws from torch's RNG: fix it without touching the caller's state.
    One thread: a few hundred rows are faster without thread hand-offs on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def mmd_drift(
    reference: np.ndarray, window: np.ndarray, p_val: float = 0.05, *, max_rows: int = MMD_ROWS, seed: int = 0
) -> dict:
    """Maximum Mean Discrepancy (alibi-detect MMDDrift, pytorch backend) on a bounded subsample."""
    rng = np.random.default_rng(seed)
    ref = reference[np.sort(rng.permutation(len(reference))[:max_rows])].astype(np.float32)
    win = window[np.sort(rng.permutation(len(window))[:max_rows])].astype(np.float32)
    base = {
        "test": "mmd",
        "p_val": p_val,
        "permutations": MMD_PERMUTATIONS,
        "max_rows": max_rows,
        "n_reference": int(len(ref)),
        "n_window": int(len(win)),
    }
    too_few = _too_few(base, len(ref), len(win))
    if too_few:
        return too_few
    from alibi_detect.cd import MMDDrift

    with _seeded_single_thread_torch(seed):
        detector = MMDDrift(ref, backend="pytorch", p_val=p_val, n_permutations=MMD_PERMUTATIONS, device="cpu")
        data = detector.predict(win)["data"]
    is_drift = bool(data["is_drift"])
    return {
        **base,
        "decision": "drift" if is_drift else "no_drift",
        "is_drift": is_drift,
        "p_value": float(data["p_val"]),
        "mmd2": float(data["distance"]),
        "mmd2_threshold": float(data["distance_threshold"]),
    }


def label_drift(reference_counts: dict[int, int], window_counts: dict[int, int], p_val: float = 0.05) -> dict:
    """Chi-square test of the label distribution (alibi-detect ChiSquareDrift on class indices)."""
    classes = sorted(set(reference_counts) | set(window_counts))
    n_ref, n_win = sum(reference_counts.values()), sum(window_counts.values())
    base = {
        "test": "chi2",
        "p_val": p_val,
        "n_reference": n_ref,
        "n_window": n_win,
        "classes": classes,
        "reference_share": _shares(reference_counts, classes),
        "window_share": _shares(window_counts, classes),
    }
    too_few = _too_few(base, n_ref, n_win)
    if too_few:
        return too_few
    from alibi_detect.cd import ChiSquareDrift

    def column(counts: dict[int, int]) -> np.ndarray:
        return np.repeat(np.arange(len(classes)), [counts.get(c, 0) for c in classes])[:, None]

    detector = ChiSquareDrift(column(reference_counts), p_val=p_val, categories_per_feature={0: len(classes)})
    data = detector.predict(column(window_counts))["data"]
    is_drift = bool(data["is_drift"])
    return {
        **base,
        "decision": "drift" if is_drift else "no_drift",
        "is_drift": is_drift,
        "p_value": float(np.asarray(data["p_val"]).min()),
        "statistic": float(np.asarray(data["distance"]).max()),
    }


def _shares(counts: dict[int, int], classes: list[int]) -> list[float]:
    total = max(sum(counts.values()), 1)
    return [round(counts.get(c, 0) / total, 4) for c in classes]


def plot_png(report: dict, reference_mean: np.ndarray | None, window_mean: np.ndarray) -> bytes:
    """Per-feature KS p-values against the corrected threshold, and the mean reference and
    window images (8x8 features), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), gridspec_kw={"width_ratios": [2.4, 1, 1]})
    ks = report.get("features", {})
    if "p_vals" in ks:
        p_vals = np.maximum(np.asarray(ks["p_vals"]), 10.0**-P_CAP)  # a p of 0 would be an infinite bar
        colours = np.where(p_vals < ks["threshold"], "tab:red", "tab:blue")
        axes[0].bar(np.arange(p_vals.size), -np.log10(p_vals), color=colours)
        axes[0].axhline(
            -np.log10(ks["threshold"]),
            color="black",
            linestyle="--",
            label=f"Bonferroni threshold {ks['threshold']:.1e}",
        )
        axes[0].legend(loc="upper right", fontsize=8)
    else:
        axes[0].text(0.5, 0.5, ks.get("reason", report.get("reason", "no KS test")), ha="center", va="center")
    space = "champion embedding dimension" if report.get("representation") == EMBEDDING else "8x8 pixel"
    axes[0].set(xlabel=f"feature ({space})", ylabel=f"-log10 p (capped at {P_CAP})", title=f"KS: {report['decision']}")
    side = FEATURE_SIDE
    for axis, image, title in ((axes[1], reference_mean, "reference mean"), (axes[2], window_mean, "window mean")):
        axis.set_xticks([]), axis.set_yticks([])
        axis.set_title(title)
        if image is None:
            axis.text(0.5, 0.5, "none", ha="center", va="center")
        else:
            axis.imshow(np.asarray(image).reshape(side, side), cmap="gray", vmin=0, vmax=1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def feature_drift(reference: np.ndarray, window: np.ndarray, p_val: float = 0.05) -> dict:
    """The feature-drift verdict used everywhere (validate-data, the monitor): KS decides, MMD on
    a bounded subsample is a second opinion."""
    ks = ks_drift(reference, window, p_val)
    mmd = mmd_drift(reference, window, p_val)
    return {"features": ks, "mmd": mmd, "mmd_agrees": mmd["decision"] == ks["decision"]}
