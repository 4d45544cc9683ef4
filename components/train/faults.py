"""Test-only fault injection for the training loop (tests/reliability/test_kill_resume.py).

Inert unless CTP_FAULT_KILL_AT_STEP is set: then rank CTP_FAULT_RANK (default 1) SIGKILLs itself
after that step, once: it first creates the marker file CTP_FAULT_MARKER, and does nothing if
that file exists. Kept out of the loop's own module so production code reads as production code.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    step: int
    rank: int
    marker: Path

    @classmethod
    def from_env(cls, env) -> FaultPlan | None:
        if not env.get("CTP_FAULT_KILL_AT_STEP"):
            return None
        return cls(int(env["CTP_FAULT_KILL_AT_STEP"]), int(env.get("CTP_FAULT_RANK", 1)), Path(env["CTP_FAULT_MARKER"]))

    def after_step(self, step: int, rank: int) -> None:
        if step == self.step and rank == self.rank and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
