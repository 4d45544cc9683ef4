"""Training entry point: ``python -m components.train.ddp --config cfg.json`` plainly, or under
``torchrun --nproc-per-node=N -m components.train.ddp --config cfg.json``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from components._shared.errors import CtpError
from components._shared.registry import CHAMPION, Registry
from components._shared.store import Store


def launch(config_path: Path, nproc_per_node: int, *, max_restarts: int = 0) -> None:
    """Run the entry point under torchrun in a child process; raise if any worker fails."""
    if nproc_per_node < 1:
        raise CtpError(f"nproc_per_node={nproc_per_node}; need at least 1", code="CONFIG_INVALID")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc_per_node}", f"--max-restarts={max_restarts}",
               "-m", "components.train.ddp", "--config", str(config_path)]
    print("[train] " + " ".join(command[2:]), flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise CtpError(f"training failed (torchrun exit code {result.returncode}); see the worker logs above",
                       code="TRAIN_FAILED")


def train_from_champion(store: Store, store_uri: str, model_name: str, fingerprint: str, out_dir: str, *,
                        nproc_per_node: int, **hyperparameters) -> dict:
    """Fetch the champion (for warm start), train under torchrun, return meta with parent_version."""
    from components.train.core import META_FILE, WEIGHTS_FILE, TrainConfig

    registry = Registry(store, model_name)
    champion = registry.alias(CHAMPION)
    parent = champion.version if champion else None
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(store_uri=store_uri, fingerprint=fingerprint, out_dir=out_dir, **hyperparameters)
        if parent and config.init != "scratch":
            config.init_weights = str(registry.fetch(parent, WEIGHTS_FILE, Path(tmp) / WEIGHTS_FILE))
            config.init_meta = str(registry.fetch(parent, META_FILE, Path(tmp) / META_FILE))
        config_path = Path(tmp) / "train-config.json"
        config.save(config_path)
        launch(config_path, nproc_per_node)
    meta_path = Path(out_dir) / META_FILE
    meta = {**json.loads(meta_path.read_text()), "parent_version": parent}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="TrainConfig as JSON")
    args = parser.parse_args(argv)
    from components.train.core import TrainConfig, train

    train(TrainConfig.load(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
