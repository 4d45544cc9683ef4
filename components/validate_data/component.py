"""KFP wrapper for validate-data: the report artifact, then stop on errors."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_data(store_uri: str, model: str, allow_new_classes: bool, run_id: str, snapshot: Input[Dataset],
                  report: Output[Artifact]):
    import json

    from components._shared.runtime import step
    from components.validate_data.core import ValidateConfig, raise_on_errors, validate

    fingerprint = snapshot.metadata["fingerprint"]
    with step("validate-data", store_uri, run_id) as store:
        result = validate(store, fingerprint, ValidateConfig(model=model, allow_new_classes=allow_new_classes))
        store.put_json(f"runs/{run_id}/validation.json", result)
        with open(report.path, "w") as handle:
            json.dump(result, handle, indent=2)
        report.metadata.update({"status": result["status"], "drift": result["drift"]["decision"]})
        raise_on_errors(result)
