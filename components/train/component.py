"""KFP wrapper for train: torchrun on this pod (DDP over its GPUs), or a Kubeflow Trainer TrainJob
when num_nodes > 1; warm start from the champion; checkpoints under checkpoints/<run-id>/."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components._shared.images import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train(
    store_uri: str,
    model_name: str,
    init: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    nproc_per_node: int,
    num_nodes: int,
    checkpoint_every: int,
    shrink_perturb: bool,
    patience: int,
    distill: float,
    flip: bool,
    crop_pad: int,
    cluster: dict,
    run_id: str,
    snapshot: Input[Dataset],
    validation: Input[Artifact],
    model: Output[Model],
):
    from components._shared.cluster import ClusterSettings
    from components._shared.runtime import step
    from components.train.ddp import train_from_champion

    hyperparameters = dict(
        init=init,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        shrink_perturb=shrink_perturb,
        patience=patience,
        distill=distill,
        flip=flip,
        crop_pad=crop_pad,
    )
    with step("train", store_uri, run_id, model=model_name) as store:
        meta = train_from_champion(
            store,
            store_uri,
            model_name,
            snapshot.metadata["fingerprint"],
            model.path,
            run_id=run_id,
            nproc_per_node=nproc_per_node,
            num_nodes=num_nodes,
            cluster=ClusterSettings.from_dict(cluster),
            **hyperparameters,
        )
    model.metadata.update(
        {
            "arch": meta["arch"],
            "init": meta["init"]["applied"],
            "parent_version": meta["parent_version"] or "",
            "framework": "pytorch+onnx",
            "resumed_from_step": meta["checkpoints"]["resumed_from_step"] or 0,
        }
    )
