"""Training entry point: ``python -m components.train.ddp --config cfg.json`` plainly, or under
``torchrun --nproc-per-node=N -m components.train.ddp --config cfg.json``; on the nodes of a
Kubeflow Trainer TrainJob, ``--store <uri> --config <key>`` reads the config from the store."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from components._shared.errors import CtpError
from components._shared.registry import CHAMPION, Registry
from components._shared.store import Store

POD_OUTPUT_DIR = "/tmp/ctp-train-output"  # on each TrainJob node; rank 0 uploads it to the store
MAX_RESTARTS = 3  # torchrun restarts the worker group from the latest checkpoint this often
# With the rendezvous store shared (torch's default), a restarted worker group reads the dead
# workers' gloo/nccl addresses and cannot connect (pytorch/pytorch#135712): a store per attempt.
RESTARTABLE_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def launch(config_path: Path, nproc_per_node: int, *, max_restarts: int = 0) -> None:
    """Run the entry point under torchrun in a child process; raise if any worker fails."""
    if nproc_per_node < 1:
        raise CtpError(f"nproc_per_node={nproc_per_node}; need at least 1", code="CONFIG_INVALID")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc_per_node}", f"--max-restarts={max_restarts}",
               "-m", "components.train.ddp", "--config", str(config_path)]
    print("[train] " + " ".join(command[2:]), flush=True)
    result = subprocess.run(command, check=False, env={**os.environ, **RESTARTABLE_ENV})
    if result.returncode != 0:
        raise CtpError(f"training failed (torchrun exit code {result.returncode}); see the worker logs above",
                       code="TRAIN_FAILED")


def train_from_champion(store: Store, store_uri: str, model_name: str, fingerprint: str, out_dir: str, *,
                        run_id: str, nproc_per_node: int, num_nodes: int = 1, cluster: dict | None = None,
                        **hyperparameters) -> dict:
    """Train from the champion (for warm start) under torchrun on this pod, or as a Kubeflow
    Trainer TrainJob when ``num_nodes > 1``; return meta with parent_version."""
    from components.train.core import META_FILE, TrainConfig

    champion = Registry(store, model_name).alias(CHAMPION)
    parent = champion.version if champion else None
    config = TrainConfig(store_uri=store_uri, fingerprint=fingerprint, out_dir=out_dir, run_id=run_id,
                         model_name=model_name, init_version=parent or "", **hyperparameters)
    if num_nodes > 1:
        _train_on_trainjob(store, config, num_nodes, nproc_per_node, cluster or {})
    else:
        with tempfile.TemporaryDirectory() as tmp:
            config.save(Path(tmp) / "train-config.json")
            launch(Path(tmp) / "train-config.json", nproc_per_node,
                   max_restarts=MAX_RESTARTS if config.checkpoint_every else 0)
    meta_path = Path(out_dir) / META_FILE
    meta = {**json.loads(meta_path.read_text()), "parent_version": parent}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def _train_on_trainjob(store: Store, config, num_nodes: int, nproc_per_node: int, cluster: dict) -> None:
    """The config goes to the store, the TrainJob's rank 0 puts the outputs back there."""
    from components.train import trainjob
    from components.train.core import META_FILE

    run_prefix = f"runs/{config.run_id}/train/"
    local_out = config.out_dir
    config.out_dir, config.output_prefix = POD_OUTPUT_DIR, run_prefix + "output/"
    store.put_json(run_prefix + "config.json", dataclasses.asdict(config))
    settings = trainjob.TrainJobSettings(**cluster)
    trainjob.run(settings, trainjob.custom_objects_api(), run_id=config.run_id, num_nodes=num_nodes,
                 nproc_per_node=nproc_per_node, store_uri=config.store_uri, config_key=run_prefix + "config.json")
    for key in store.list(config.output_prefix):
        store.get_file(key, Path(local_out) / key[len(config.output_prefix):])
    if not (Path(local_out) / META_FILE).exists():
        raise CtpError(f"the TrainJob finished but wrote no {store.describe(config.output_prefix + META_FILE)}",
                       hint="see the TrainJob's rank-0 pod log", code="TRAIN_FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="TrainConfig as JSON: a file, or a key in --store")
    parser.add_argument("--store", default="", help="read --config from this store (multi-node pods)")
    args = parser.parse_args(argv)
    from components.train.core import TrainConfig, train

    if args.store:
        from components._shared.store import open_store

        config = TrainConfig(**open_store(args.store).get_json(args.config))
    else:
        config = TrainConfig.load(args.config)
    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
