"""KFP wrapper for canary deploy (local target): register, analyse, promote or roll back."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_canary(store_uri: str, model_name: str, dataset: str, trigger: str, min_agreement: float,
                  run_id: str, snapshot: Input[Dataset], validation: Input[Artifact], challenger: Input[Model],
                  evaluation: Input[Artifact], decision: Output[Artifact]) -> str:
    import json
    from pathlib import Path

    from components._shared.runtime import step
    from components._shared.snapshot import read_manifest
    from components.deploy_canary.core import DeployConfig, build_card, deploy

    with step("deploy-canary", store_uri, run_id) as store:
        card = build_card(json.loads((Path(challenger.path) / "meta.json").read_text()),
                          json.loads(Path(evaluation.path).read_text()), json.loads(Path(validation.path).read_text()),
                          read_manifest(store, snapshot.metadata["fingerprint"]), run_id=run_id, trigger=trigger)
        record = deploy(store, Path(challenger.path), card,
                        DeployConfig(model=model_name, dataset=dataset, min_agreement=min_agreement))
    with open(decision.path, "w") as handle:
        json.dump(record, handle, indent=2)
    decision.metadata.update({"decision": record["decision"], "version": record["version"]})
    return record["decision"]
