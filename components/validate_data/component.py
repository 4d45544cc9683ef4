"""KFP wrapper for validate-data: the report (JSON and Markdown) and the drift plot, then stop on errors."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_data(
    store_uri: str,
    model_name: str,
    allow_new_classes: bool,
    run_id: str,
    snapshot: Input[Dataset],
    report: Output[Artifact],
    report_markdown: Output[Markdown],
    drift_plot: Output[Artifact],
):
    import json

    from components._shared.runtime import step
    from components.validate_data.config import ValidateConfig
    from components.validate_data.core import publish, raise_on_errors, validate

    fingerprint = snapshot.metadata["fingerprint"]
    with step("validate-data", store_uri, run_id, model=model_name) as store:
        config = ValidateConfig(model_name=model_name, allow_new_classes=allow_new_classes)
        result = validate(store, fingerprint, config)
        keys = publish(store, run_id, result)
        with open(report.path, "w") as handle:
            json.dump(result.report, handle, indent=2)
        with open(report_markdown.path, "w") as handle:
            handle.write(result.markdown)
        with open(drift_plot.path, "wb") as handle:
            handle.write(result.plot_png)
        report.metadata.update({"status": result.report["status"], "drift": result.report["drift"]["decision"]})
        drift_plot.metadata.update({"mime_type": "image/png", "store_key": keys["drift.png"]})
        raise_on_errors(result.report)
