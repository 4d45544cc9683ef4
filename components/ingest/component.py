"""KFP wrapper for ingest: resolves the run id and publishes the snapshot."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(store_uri: str, dataset: str, test_fraction: float, data_fingerprint: str, run_id: str,
           job_id: str, snapshot: Output[Dataset], replay_fraction: float = 1.0, model: str = "digits") -> str:
    """Returns the run id every later step records under (run_id, else the KFP job id)."""
    import dataclasses
    import json

    from components._shared.runtime import step
    from components.ingest.core import IngestConfig, ingest as run_ingest

    run_id = run_id or job_id
    with step("ingest", store_uri, run_id) as store:
        result = run_ingest(store, IngestConfig(dataset, test_fraction, data_fingerprint, replay_fraction, model))
    with open(snapshot.path, "w") as handle:
        json.dump(dataclasses.asdict(result), handle, indent=2)
    snapshot.metadata.update({"fingerprint": result.fingerprint, "store": store_uri, **result.rows})
    return run_id
