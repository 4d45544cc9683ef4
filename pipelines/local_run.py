"""`ctp run`: the compiled pipeline's own function, executed by kfp.local in subprocesses."""

from __future__ import annotations

import dataclasses

from components._shared.cluster import ClusterSettings
from components._shared.errors import CtpError
from components._shared.store import DEFAULT_STORE, Store, open_store
from components.ingest.config import IngestConfig
from pipelines.run_params import DEFAULT_TRIGGER, new_run_id, run_parameters, spec_defaults

LOCAL_NPROC_PER_NODE = 2  # torchrun processes on this machine (gloo on the CPU)
LOCAL_PIPELINE_ROOT = "./.ctp-runs"  # kfp.local's artifacts
# kfp.local ignores resources and node selectors but applies task env vars: built for the cluster
# (gpus=1), the train step would get CTP_GPUS_REQUESTED=1 and fail on a machine without CUDA.
LOCAL_CLUSTER = ClusterSettings(gpus=0)


@dataclasses.dataclass(frozen=True)
class LocalRunOptions:
    store_uri: str = DEFAULT_STORE
    dataset: str = IngestConfig.dataset
    model_name: str = IngestConfig.model_name
    trigger: str = DEFAULT_TRIGGER
    evidence_uri: str = ""  # what started the run (the drift monitor's report), kept in the model card
    pipeline_root: str = LOCAL_PIPELINE_ROOT
    params: dict = dataclasses.field(default_factory=dict)  # any other pipeline parameter; else its default


def run_locally(options: LocalRunOptions, run_id: str | None = None) -> str:
    """Run the pipeline; returns a printable summary. Raises CtpError with the failing step's line."""
    import warnings
    from pathlib import Path

    from google.protobuf import json_format
    from kfp import local

    from pipelines.continuous_training import build_pipeline

    store = open_store(options.store_uri)
    pipeline = build_pipeline(LOCAL_CLUSTER)
    defaults = {
        **spec_defaults(json_format.MessageToDict(pipeline.pipeline_spec)),
        "nproc_per_node": LOCAL_NPROC_PER_NODE,
    }
    unknown = sorted(set(options.params) - set(defaults))
    if unknown:
        raise CtpError(
            f"unknown pipeline parameter(s) {', '.join(unknown)}",
            code="CONFIG_INVALID",
            hint=f"choose from {', '.join(sorted(defaults))}",
        )
    run_id = run_id or options.params.get("run_id") or new_run_id()  # --param run_id=... names the run
    # the cache key, as on KFP: the same window ingest will read
    parameters = run_parameters(
        store,
        defaults,
        dataset=options.dataset,
        model_name=options.model_name,
        trigger=options.trigger,
        run_id=run_id,
        evidence_uri=options.evidence_uri,
        extra={"nproc_per_node": LOCAL_NPROC_PER_NODE, **options.params},
    )
    # kfp.local warns that it ignores resources, GPUs and images: expected on a laptop, see `ctp compile`.
    warnings.filterwarnings("ignore", module=r"kfp\.local")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(Path(options.pipeline_root).resolve()),
        raise_on_error=True,
    )
    try:
        pipeline(**parameters)
    except RuntimeError as err:
        from components._shared.runtime import recorded_error

        raise recorded_error(store, run_id) or CtpError(
            f"run {run_id} failed: {err}",
            code="RUN_FAILED",
            hint=f"see the step logs above; artifacts are under {store.describe(f'runs/{run_id}/')}",
        ) from None
    return summarize(store, run_id, options.model_name)


def summarize(store: Store, run_id: str, model: str) -> str:
    found = store.get_json_with_etag(f"runs/{run_id}/decision.json")
    if found and found[0]["decision"] == "skip":  # another run held the model's lease: nothing trained
        return "\n".join(
            [
                f"run       {run_id}",
                f"decision  skip: {found[0]['reason']}",
                f"artifacts {store.describe(f'runs/{run_id}/')}",
            ]
        )
    evaluation = store.get_json(f"runs/{run_id}/evaluation.json")
    challenger, champion = evaluation["challenger"], evaluation["champion"]
    lines = [
        f"run       {run_id}",
        f"data      {evaluation['fingerprint']}",
        f"accuracy  challenger {challenger['accuracy']:.4f}  macro-F1 {challenger['macro_f1']:.4f}",
    ]
    if champion:
        lines.append(
            f"          champion   {champion['accuracy']:.4f}  macro-F1 {champion['macro_f1']:.4f}"
            f"  ({evaluation['champion_version']})"
        )
    lines.append(f"gate      {evaluation['gate']['decision']}: {evaluation['gate']['reason']}")
    if found:
        decision = found[0]
        lines.append(f"version   {model}:{decision['version']}")
        lines.append(f"decision  {decision['decision']}: {decision['reason']}")
    else:
        lines.append("decision  not deployed (gate failed); the champion is unchanged")
    lines.append(f"artifacts {store.describe(f'runs/{run_id}/')}")
    return "\n".join(lines)
