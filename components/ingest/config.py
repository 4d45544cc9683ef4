"""Ingest step settings: the one place their defaults are written (stdlib only)."""

from __future__ import annotations

import dataclasses

from components._shared.errors import ConfigError

LEASE_POLICIES = ("skip", "wait")
SKIPPED = "(skipped)"  # ingest's output when another run holds the model's lease: never a run id (not a key)
REPLAY_AUTO = -1.0  # replay_fraction: let replay_ratio size the replay by the new data


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    dataset: str = "digits"
    test_fraction: float = 0.2
    expected_fingerprint: str = ""  # computed before the run; "" = accept whatever is there
    # Share of each class's already-consumed training rows to keep (0..1), or REPLAY_AUTO: then
    # replay_ratio x the new rows are replayed (capped at all of them). A fixed share costs a warm
    # start as much as the history grows; sized by the new data it stays a fraction of a retrain.
    replay_fraction: float = REPLAY_AUTO
    # With REPLAY_AUTO: old training rows replayed per new row. bench_regime (20k-row history, a
    # 10% shifted batch, 3 seeds): 2 reaches scratch's accuracy in 0.15x its steps, forgets 0.35
    # point and ends 0.8 point above scratch on the new data; 1 forgets 0.85, 0.5 1.2 (docs/benchmarks.md).
    replay_ratio: float = 2.0
    model_name: str = "digits"  # whose champion's card holds the watermark
    lease_policy: str = "skip"  # another run of the model is active: "skip" (end at once) or "wait"
    lease_ttl_seconds: int = 1800  # a run's lease lapses this long after its last renewal (a killed run)
    lease_wait_seconds: int = 3600  # "wait": give up (and skip) after this long
    force: bool = False  # train even when no batch is newer than the champion's (else: skip: no new data)

    def __post_init__(self):
        if self.lease_policy not in LEASE_POLICIES:
            raise ConfigError(f"lease_policy {self.lease_policy!r} is not one of {', '.join(LEASE_POLICIES)}")
        if self.lease_ttl_seconds <= 0 or self.lease_wait_seconds < 0:
            raise ConfigError(
                f"lease_ttl_seconds {self.lease_ttl_seconds} must be > 0 and lease_wait_seconds "
                f"{self.lease_wait_seconds} >= 0"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction {self.test_fraction} must be between 0 and 1")
        if not (0.0 <= self.replay_fraction <= 1.0 or self.replay_fraction == REPLAY_AUTO):
            raise ConfigError(
                f"replay_fraction {self.replay_fraction} must be between 0 and 1, or {REPLAY_AUTO} (auto)",
                hint=f"1.0 replays all earlier data, 0.0 trains on new batches only, {REPLAY_AUTO} sizes the "
                "replay by the new data (replay_ratio)",
            )
        if self.replay_ratio < 0:
            raise ConfigError(
                f"replay_ratio {self.replay_ratio} must be >= 0",
                hint="old rows replayed per new row, e.g. 1.0; 0 keeps only a minimum per class",
            )

    @property
    def replay_auto(self) -> bool:
        return self.replay_fraction == REPLAY_AUTO
