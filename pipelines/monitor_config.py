"""The drift monitor's settings (and its label triggers'): defaults written once, stdlib only."""

from __future__ import annotations

import dataclasses

from components._shared.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    dataset: str = "digits"
    model_name: str = "digits"
    window_rows: int = 500  # newest traffic examples compared with the reference
    cooldown_minutes: float = 60.0
    p_val: float = 0.05
    min_accuracy: float = 0.0  # performance: fires below this accuracy on new labels (0: off)
    max_drop: float = 0.0  # performance: fires this far below the champion's test accuracy (0: off)
    label_rows: int = 2000  # performance: the newest labelled rows newer than the watermark it scores
    min_scored_rows: int = 100  # performance: no decision on fewer new labelled rows
    min_new_rows: int = 0  # new_labels: fires at this many labelled rows newer than the watermark (0: off)

    def __post_init__(self):
        if self.window_rows < 1:
            raise ConfigError(f"window_rows={self.window_rows}; must be at least 1")
        if self.cooldown_minutes < 0:
            raise ConfigError(f"cooldown_minutes={self.cooldown_minutes}; must be 0 or more")
        for name in ("min_accuracy", "max_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)}; must be between 0 and 1 (0: off)")
        if self.label_rows < 1 or self.min_scored_rows < 1:
            raise ConfigError(
                f"label_rows={self.label_rows}, min_scored_rows={self.min_scored_rows}; each must be 1 or more"
            )
        if self.min_scored_rows > self.label_rows:
            raise ConfigError(
                f"min_scored_rows={self.min_scored_rows} exceeds label_rows={self.label_rows}",
                hint="the performance trigger could never decide; raise label_rows or lower min_scored_rows",
            )
        if self.min_new_rows < 0:
            raise ConfigError(f"min_new_rows={self.min_new_rows}; must be 0 (off) or more")

    @property
    def reads_labels(self) -> bool:
        return bool(self.min_accuracy or self.max_drop or self.min_new_rows)
