"""Training entry point: ``python -m components.train.ddp --config cfg.json`` plainly, or under
``torchrun --nproc-per-node=N -m components.train.ddp --config cfg.json``; on the nodes of a
Kubeflow Trainer TrainJob, ``--store <uri> --config <key>`` reads the config from the store."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from components._shared.cluster import ClusterSettings
from components._shared.errors import CtpError
from components._shared.model.files import META_FILE
from components._shared.registry import CHAMPION, Registry
from components._shared.store import Store
from components.train.config import TrainConfig
from components.train.torchrun import MAX_RESTARTS, launch

POD_OUTPUT_DIR = "/tmp/ctp-train-output"  # on each TrainJob node; rank 0 uploads it to the store


def train_from_champion(
    store: Store,
    store_uri: str,
    model_name: str,
    fingerprint: str,
    out_dir: str,
    *,
    run_id: str,
    nproc_per_node: int,
    num_nodes: int = 1,
    cluster: ClusterSettings = ClusterSettings(),
    **hyperparameters,
) -> dict:
    """Train from the champion (for warm start) under torchrun on this pod, or as a Kubeflow
    Trainer TrainJob when ``num_nodes > 1``; return meta with parent_version."""
    champion = Registry(store, model_name).alias(CHAMPION)
    parent = champion.version if champion else None
    config = TrainConfig(
        store_uri=store_uri,
        fingerprint=fingerprint,
        out_dir=out_dir,
        run_id=run_id,
        model_name=model_name,
        init_version=parent or "",
        **hyperparameters,
    )
    cluster.check_nodes(num_nodes)
    if num_nodes > 1:
        _train_on_trainjob(store, config, num_nodes, nproc_per_node, cluster)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            config.save(Path(tmp) / "train-config.json")
            launch(
                Path(tmp) / "train-config.json",
                nproc_per_node,
                max_restarts=MAX_RESTARTS if config.checkpoint_every else 0,
            )
    meta_path = Path(out_dir) / META_FILE
    meta = {**json.loads(meta_path.read_text()), "parent_version": parent}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def _train_on_trainjob(
    store: Store, config: TrainConfig, num_nodes: int, nproc_per_node: int, cluster: ClusterSettings
) -> None:
    """The config goes to the store, the TrainJob's rank 0 puts the outputs back there."""
    from components.train import trainjob

    run_prefix = f"runs/{config.run_id}/train/"
    output_prefix = run_prefix + "output/"
    on_nodes = dataclasses.asdict(dataclasses.replace(config, out_dir=POD_OUTPUT_DIR, output_prefix=output_prefix))
    store.put_json(run_prefix + "config.json", on_nodes)
    trainjob.run(
        trainjob.TrainJobSettings(cluster=cluster),
        trainjob.custom_objects_api(),
        run_id=config.run_id,
        num_nodes=num_nodes,
        nproc_per_node=nproc_per_node,
        store_uri=config.store_uri,
        config_key=run_prefix + "config.json",
        # a retry of this step adopts a job only if it reads the same config (e.g. the same champion)
        config_digest=hashlib.sha256(json.dumps(on_nodes, sort_keys=True).encode()).hexdigest(),
    )
    for key in store.list(output_prefix):
        store.get_file(key, Path(config.out_dir) / key[len(output_prefix) :])
    if not (Path(config.out_dir) / META_FILE).exists():
        raise CtpError(
            f"the TrainJob finished but wrote no {store.describe(output_prefix + META_FILE)}",
            hint="see the TrainJob's rank-0 pod log",
            code="TRAIN_FAILED",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="TrainConfig as JSON: a file, or a key in --store")
    parser.add_argument("--store", default="", help="read --config from this store (multi-node pods)")
    args = parser.parse_args(argv)
    from components.train.core import train

    if args.store:
        from components._shared.store import open_store

        config = TrainConfig(**open_store(args.store).get_json(args.config))
    else:
        config = TrainConfig.load(args.config)
    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
