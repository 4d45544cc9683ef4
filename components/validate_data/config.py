"""Validate-data step settings: the one place their defaults are written (stdlib only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    model_name: str = "digits"  # whose champion the data is checked against
    allow_new_classes: bool = False
    min_train_rows: int = 20
    max_train_rows: int = 0  # 0: no upper bound
    drift_p_val: float = 0.05
