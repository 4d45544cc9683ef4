"""Ingest step settings: the one place their defaults are written (stdlib only)."""

from __future__ import annotations

import dataclasses

from components._shared.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    dataset: str = "digits"
    test_fraction: float = 0.2
    expected_fingerprint: str = ""  # computed before the run; "" = accept whatever is there
    replay_fraction: float = 1.0  # share of each class's already-consumed training rows to keep
    model_name: str = "digits"  # whose champion's card holds the watermark

    def __post_init__(self):
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction {self.test_fraction} must be between 0 and 1")
        if not 0.0 <= self.replay_fraction <= 1.0:
            raise ConfigError(
                f"replay_fraction {self.replay_fraction} must be between 0 and 1",
                hint="1.0 replays all earlier data, 0.0 trains on new batches only",
            )
