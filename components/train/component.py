"""KFP wrapper for train: fetch the champion for warm start, run torchrun, emit the model."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components._shared.images import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train(store_uri: str, model_name: str, init: str, epochs: int, batch_size: int, lr: float, seed: int,
          nproc_per_node: int, run_id: str, snapshot: Input[Dataset], validation: Input[Artifact],
          model: Output[Model]):
    from components._shared.runtime import step
    from components.train.ddp import train_from_champion

    with step("train", store_uri, run_id) as store:
        meta = train_from_champion(store, store_uri, model_name, snapshot.metadata["fingerprint"], model.path,
                                   init=init, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                   nproc_per_node=nproc_per_node)
    model.metadata.update({"arch": meta["arch"], "init": meta["init"]["applied"],
                           "parent_version": meta["parent_version"] or "", "framework": "pytorch+onnx"})
