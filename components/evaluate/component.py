"""KFP wrapper for evaluate: metrics for the KFP UI, the reports, and the gate as one string."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    store_uri: str,
    model_name: str,
    min_accuracy: float,
    margin: float,
    alpha: float,
    gate_test: str,
    max_forgetting: float,
    run_id: str,
    snapshot: Input[Dataset],
    challenger: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[Artifact],
    summary: Output[Markdown],
) -> str:
    """Returns "pass" or "fail": the condition of the deploy step (a single output, see DESIGN 5)."""
    import json
    from pathlib import Path

    from components._shared.lease import release
    from components._shared.runtime import step
    from components.evaluate.config import EvaluateConfig
    from components.evaluate.core import evaluate_against_champion, markdown_report

    with step("evaluate", store_uri, run_id, model=model_name) as store:
        config = EvaluateConfig(
            min_accuracy=min_accuracy, margin=margin, alpha=alpha, gate_test=gate_test, max_forgetting=max_forgetting
        )
        result = evaluate_against_champion(
            store, model_name, snapshot.metadata["fingerprint"], Path(challenger.path), config
        )
        store.put_json(f"runs/{run_id}/evaluation.json", result)
        if result["gate"]["decision"] != "pass":  # the run ends here: the next one may start
            release(store, model_name, run_id, reason="gate failed")
    for side in ("challenger", "champion"):
        for name, value in (result[side] or {}).items():
            if name in ("accuracy", "macro_f1", "ece"):
                metrics.log_metric(f"{side}_{name}", value)
        for slice_name, values in (result[side] or {}).get("slices", {}).items():
            metrics.log_metric(f"{side}_{slice_name}_accuracy", values["accuracy"])
    labels = [str(c) for c in result["challenger"]["classes"]]
    confusion.log_confusion_matrix(labels, result["challenger"]["confusion_matrix"])
    with open(report.path, "w") as handle:
        json.dump(result, handle, indent=2)
    with open(summary.path, "w") as handle:
        handle.write(markdown_report(result))
    return result["gate"]["decision"]
