"""Evaluate step settings: the one place their defaults are written (stdlib only)."""

from __future__ import annotations

import dataclasses

from components._shared.errors import ConfigError

GATE_TESTS = ("paired_bootstrap", "mcnemar")
HYPOTHESES = ("non_inferiority", "superiority")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    min_accuracy: float = 0.8  # first model (no champion): absolute bar
    margin: float = 0.01  # non-inferiority margin vs the champion, in accuracy
    alpha: float = 0.05
    gate_test: str = "paired_bootstrap"  # or "mcnemar" (exact, on the discordant pairs)
    hypothesis: str = "non_inferiority"  # or "superiority": the challenger must be better
    max_forgetting: float = 0.02  # largest accuracy drop allowed on the old-data slice
    bootstrap: int = 2000
    ece_bins: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.gate_test not in GATE_TESTS:
            raise ConfigError(f"gate_test {self.gate_test!r} unknown", hint=f"use one of {', '.join(GATE_TESTS)}")
        if self.hypothesis not in HYPOTHESES:
            raise ConfigError(f"hypothesis {self.hypothesis!r} unknown", hint=f"use one of {', '.join(HYPOTHESES)}")
        if not 0.0 < self.alpha < 0.5:
            raise ConfigError(f"alpha={self.alpha} must be between 0 and 0.5")
        if not (0.0 <= self.margin < 1.0 and 0.0 <= self.max_forgetting < 1.0 and 0.0 <= self.min_accuracy <= 1.0):
            raise ConfigError("margin, max_forgetting and min_accuracy must be accuracies between 0 and 1")
