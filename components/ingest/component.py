"""KFP wrapper for ingest: resolves the run id and publishes the snapshot."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    store_uri: str,
    dataset: str,
    model_name: str,
    test_fraction: float,
    replay_fraction: float,
    replay_ratio: float,
    data_fingerprint: str,
    lease_policy: str,
    lease_ttl_seconds: int,
    lease_wait_seconds: int,
    force: bool,
    run_id: str,
    job_id: str,
    snapshot: Output[Dataset],
) -> str:
    """Takes the model's lease and returns the run id every later step records under (run_id,
    else the KFP job id), or SKIPPED when another run holds the lease or no batch is newer than the champion's
    (the rest is skipped; runs/<run-id>/decision.json says why)."""
    import dataclasses
    import json

    from components._shared import lease
    from components._shared.runtime import step
    from components.ingest.config import SKIPPED, IngestConfig
    from components.ingest.core import begin_run, no_new_data
    from components.ingest.core import ingest as run_ingest

    run_id = run_id or job_id
    with step("ingest", store_uri, run_id) as store:
        config = IngestConfig(
            dataset=dataset,
            model_name=model_name,
            test_fraction=test_fraction,
            replay_fraction=replay_fraction,
            replay_ratio=replay_ratio,
            expected_fingerprint=data_fingerprint,
            lease_policy=lease_policy,
            lease_ttl_seconds=lease_ttl_seconds,
            lease_wait_seconds=lease_wait_seconds,
            force=force,
        )
        skip = begin_run(store, config, run_id)
        if not skip:
            skip = no_new_data(store, config, run_id)
            if skip:
                lease.release(store, model_name, run_id, reason="skip: no new data")
        if skip:
            print(f"ctp: ingest: skip: {skip['reason']}", flush=True)
            with open(snapshot.path, "w") as handle:
                json.dump(skip, handle, indent=2)
            return SKIPPED
    with step("ingest", store_uri, run_id, model=model_name) as store:
        result = run_ingest(store, config, run_id=run_id)
    with open(snapshot.path, "w") as handle:
        json.dump(dataclasses.asdict(result), handle, indent=2)
    snapshot.metadata.update({"fingerprint": result.fingerprint, "store": store_uri, **result.rows})
    return run_id
