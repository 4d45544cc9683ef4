"""KFP wrapper for canary deploy: register, canary (local replay or KServe), promote or roll back."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_canary(store_uri: str, model_name: str, dataset: str, trigger: str, min_agreement: float,
                  run_id: str, snapshot: Input[Dataset], validation: Input[Artifact], challenger: Input[Model],
                  evaluation: Input[Artifact], decision: Output[Artifact], deploy_target: str = "local",
                  kserve_namespace: str = "ctp", canary_percent: int = 10, canary_intervals: int = 3,
                  canary_interval_seconds: float = 60.0, prometheus_url: str = "",
                  evidence_uri: str = "") -> str:
    import json
    from pathlib import Path

    from components._shared.runtime import step
    from components.deploy_canary.core import DeployConfig, card_from_artifacts, deploy, serving_rollout

    with step("deploy-canary", store_uri, run_id) as store:
        rollout = serving_rollout(deploy_target, store, model_name, namespace=kserve_namespace,
                                  canary_percent=canary_percent, intervals=canary_intervals,
                                  interval_seconds=canary_interval_seconds, prometheus_url=prometheus_url)
        card = card_from_artifacts(store, Path(challenger.path), Path(evaluation.path), Path(validation.path),
                                   snapshot.metadata["fingerprint"], run_id=run_id, trigger=trigger,
                                   evidence_uri=evidence_uri)
        record = deploy(store, Path(challenger.path), card,
                        DeployConfig(model=model_name, dataset=dataset, min_agreement=min_agreement), rollout)
    with open(decision.path, "w") as handle:
        json.dump(record, handle, indent=2)
    decision.metadata.update({"decision": record["decision"], "version": record["version"]})
    return record["decision"]
