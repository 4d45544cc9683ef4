"""KFP wrapper for canary deploy: register, canary (local replay or KServe), promote or roll back."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_canary(
    store_uri: str,
    model_name: str,
    dataset: str,
    trigger: str,
    evidence_uri: str,
    min_agreement: float,
    deploy_target: str,
    kserve_namespace: str,
    canary_percent: int,
    canary_intervals: int,
    prometheus_url: str,
    run_id: str,
    snapshot: Input[Dataset],
    validation: Input[Artifact],
    challenger: Input[Model],
    evaluation: Input[Artifact],
    decision: Output[Artifact],
) -> str:
    import json
    from pathlib import Path

    from components._shared.lease import hold, release
    from components._shared.runtime import step
    from components.deploy_canary.config import DeployConfig, KServeConfig
    from components.deploy_canary.core import card_from_artifacts, deploy
    from components.deploy_canary.kserve import serving_rollout

    with step("deploy-canary", store_uri, run_id, model=model_name) as store:
        config = DeployConfig(
            model_name=model_name, dataset=dataset, min_agreement=min_agreement, deploy_target=deploy_target
        )
        kserve = KServeConfig(
            name=model_name,
            namespace=kserve_namespace,
            canary_percent=canary_percent,
            intervals=canary_intervals,
            prometheus_url=prometheus_url,
        )
        rollout = serving_rollout(config, store, kserve)
        card = card_from_artifacts(
            store,
            Path(challenger.path),
            Path(evaluation.path),
            Path(validation.path),
            snapshot.metadata["fingerprint"],
            run_id=run_id,
            trigger=trigger,
            evidence_uri=evidence_uri,
        )
        record = deploy(
            store, Path(challenger.path), card, config, rollout, guard=lambda: hold(store, model_name, run_id)
        )
        release(store, model_name, run_id, reason=f"run ended: {record['decision']}")
    with open(decision.path, "w") as handle:
        json.dump(record, handle, indent=2)
    decision.metadata.update({"decision": record["decision"], "version": record["version"]})
    return record["decision"]
