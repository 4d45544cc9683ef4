"""KFP wrapper for evaluate: metrics for the KFP UI, the report, and the gate as one string."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(store_uri: str, model_name: str, min_accuracy: float, margin: float, run_id: str,
             snapshot: Input[Dataset], challenger: Input[Model], metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], report: Output[Artifact]) -> str:
    """Returns "pass" or "fail": the condition of the deploy step (a single output, see DESIGN 5)."""
    import json
    from pathlib import Path

    from components._shared.runtime import step
    from components.evaluate.core import EvaluateConfig, evaluate_against_champion

    with step("evaluate", store_uri, run_id) as store:
        result = evaluate_against_champion(store, model_name, snapshot.metadata["fingerprint"],
                                           Path(challenger.path), EvaluateConfig(min_accuracy, margin))
        store.put_json(f"runs/{run_id}/evaluation.json", result)
    for side in ("challenger", "champion"):
        for name in ("accuracy", "macro_f1"):
            if result[side] is not None:
                metrics.log_metric(f"{side}_{name}", result[side][name])
    labels = [str(c) for c in result["challenger"]["classes"]]
    confusion.log_confusion_matrix(labels, result["challenger"]["confusion_matrix"])
    with open(report.path, "w") as handle:
        json.dump(result, handle, indent=2)
    return result["gate"]["decision"]
