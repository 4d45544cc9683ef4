"""Starting the training entry point under torchrun on this machine or pod, and how it restarts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from components._shared.errors import CtpError

ENTRY_POINT = "components.train.ddp"
MAX_RESTARTS = 3  # torchrun restarts the worker group from the latest checkpoint this often
# With the rendezvous store shared (torch's default), a restarted worker group reads the dead
# workers' gloo/nccl addresses and cannot connect (pytorch/pytorch#135712): a store per attempt.
RESTARTABLE_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def launch(config_path: Path, nproc_per_node: int, *, max_restarts: int = 0) -> None:
    """Run the entry point under torchrun in a child process; raise if any worker fails."""
    if nproc_per_node < 1:
        raise CtpError(f"nproc_per_node={nproc_per_node}; need at least 1", code="CONFIG_INVALID")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        f"--max-restarts={max_restarts}",
        "-m",
        ENTRY_POINT,
        "--config",
        str(config_path),
    ]
    print("[train] " + " ".join(command[2:]), flush=True)
    result = subprocess.run(command, check=False, env={**os.environ, **RESTARTABLE_ENV})
    if result.returncode != 0:
        raise CtpError(
            f"training failed (torchrun exit code {result.returncode}); see the worker logs above", code="TRAIN_FAILED"
        )
