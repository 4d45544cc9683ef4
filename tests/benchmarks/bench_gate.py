"""The two paired gate tests side by side on simulated challengers (digits-sized test split):
how often each passes a better, an equal, a margin-worse (the type-I error, goal <= alpha) and a
3-points-worse challenger, and what a call costs."""

from __future__ import annotations

import time

import numpy as np

from components.evaluate.config import EvaluateConfig
from components.evaluate.core import mcnemar_exact, paired_bootstrap

N, TRIALS, CHAMPION_ACCURACY = 360, 200, 0.95


def simulate(rng: np.random.Generator, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Champion right with p=0.95; the challenger wins 2% of examples and loses 2% (churn), plus
    extra wins or losses so that its expected accuracy difference is ``delta``."""
    champion = rng.random(N) < CHAMPION_ACCURACY
    gains, losses = 0.02 + max(delta, 0.0), 0.02 + max(-delta, 0.0)
    flip = np.where(
        champion, rng.random(N) < losses / CHAMPION_ACCURACY, rng.random(N) < gains / (1 - CHAMPION_ACCURACY)
    )
    return champion ^ flip, champion


def run() -> None:
    config = EvaluateConfig()
    print(f"{'challenger':<14} {'bootstrap pass':>14} {'McNemar pass':>13}")
    timings = {"paired_bootstrap": 0.0, "mcnemar": 0.0}
    for label, delta in (("+2 points", 0.02), ("equal", 0.0), ("-1 (margin)", -0.01), ("-3 points", -0.03)):
        rng = np.random.default_rng(0)
        passes = {"paired_bootstrap": 0, "mcnemar": 0}
        for _ in range(TRIALS):
            challenger, champion = simulate(rng, delta)
            for name, test in (("paired_bootstrap", paired_bootstrap), ("mcnemar", mcnemar_exact)):
                started = time.perf_counter()
                passes[name] += test(challenger, champion, config)["passed"]
                timings[name] += time.perf_counter() - started
        print(f"{label:<14} {passes['paired_bootstrap'] / TRIALS:>14.2f} {passes['mcnemar'] / TRIALS:>13.2f}")
    calls = 4 * TRIALS
    print(
        f"time per call: bootstrap {1e3 * timings['paired_bootstrap'] / calls:.1f} ms, McNemar "
        f"{1e3 * timings['mcnemar'] / calls:.2f} ms (ratio {timings['paired_bootstrap'] / timings['mcnemar']:.0f}x)"
    )
