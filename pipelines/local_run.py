"""`ctp run`: the compiled pipeline's own function, executed by kfp.local in subprocesses."""

from __future__ import annotations

import dataclasses
import secrets

from components._shared.errors import CtpError
from components._shared.registry import new_version_id
from components._shared.store import Store, open_store


@dataclasses.dataclass(frozen=True)
class LocalRunOptions:
    store_uri: str = "./.ctp-store"
    dataset: str = "digits"
    model_name: str = "digits"
    nproc_per_node: int = 2
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.002
    init: str = "auto"
    trigger: str = "manual"
    evidence_uri: str = ""  # what started the run (the drift monitor's report), kept in the model card
    min_accuracy: float = 0.8
    margin: float = 0.01
    allow_new_classes: bool = False
    pipeline_root: str = "./.ctp-runs"
    test_fraction: float = 0.2
    extra_params: dict = dataclasses.field(default_factory=dict)  # any other pipeline parameter


def new_run_id() -> str:
    return f"run-{new_version_id().split('-')[0].lower()}-{secrets.token_hex(2)}"


def run_locally(options: LocalRunOptions, run_id: str | None = None) -> str:
    """Run the pipeline; returns a printable summary. Raises CtpError with the failing step's line."""
    import warnings
    from pathlib import Path

    from kfp import local

    from components.ingest.core import compute_fingerprint
    from pipelines.continuous_training import build_pipeline

    store = open_store(options.store_uri)
    replay = float(options.extra_params.get("replay_fraction", 1.0))
    # the cache key, as on KFP: the same window ingest will read
    fingerprint = compute_fingerprint(store, options.dataset, options.test_fraction, replay, options.model_name)
    run_id = run_id or new_run_id()
    # kfp.local warns that it ignores resources, GPUs and images: expected on a laptop, see `ctp compile`.
    warnings.filterwarnings("ignore", module=r"kfp\.local")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(options.pipeline_root).resolve()),
               raise_on_error=True)
    pipeline = build_pipeline()
    unknown = sorted(set(options.extra_params) - set(pipeline.component_spec.inputs))
    if unknown:
        raise CtpError(f"unknown pipeline parameter(s) {', '.join(unknown)}", code="CONFIG_INVALID",
                       hint=f"choose from {', '.join(sorted(pipeline.component_spec.inputs))}")
    try:
        pipeline(store_uri=store.uri, dataset=options.dataset, model_name=options.model_name,
                 data_fingerprint=fingerprint, run_id=run_id, trigger=options.trigger,
                 evidence_uri=options.evidence_uri,
                 test_fraction=options.test_fraction, allow_new_classes=options.allow_new_classes, init=options.init,
                 epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                 nproc_per_node=options.nproc_per_node, min_accuracy=options.min_accuracy, margin=options.margin,
                 **options.extra_params)
    except RuntimeError as err:
        from components._shared.runtime import recorded_error

        raise recorded_error(store, run_id) or CtpError(
            f"run {run_id} failed: {err}", code="RUN_FAILED",
            hint=f"see the step logs above; artifacts are under {store.describe(f'runs/{run_id}/')}") from None
    return summarize(store, run_id, options.model_name)


def summarize(store: Store, run_id: str, model: str) -> str:
    evaluation = store.get_json(f"runs/{run_id}/evaluation.json")
    found = store.get_json_with_etag(f"runs/{run_id}/decision.json")
    challenger, champion = evaluation["challenger"], evaluation["champion"]
    lines = [f"run       {run_id}",
             f"data      {evaluation['fingerprint']}",
             f"accuracy  challenger {challenger['accuracy']:.4f}  macro-F1 {challenger['macro_f1']:.4f}"]
    if champion:
        lines.append(f"          champion   {champion['accuracy']:.4f}  macro-F1 {champion['macro_f1']:.4f}"
                     f"  ({evaluation['champion_version']})")
    lines.append(f"gate      {evaluation['gate']['decision']}: {evaluation['gate']['reason']}")
    if found:
        decision = found[0]
        lines.append(f"version   {model}:{decision['version']}")
        lines.append(f"decision  {decision['decision']}: {decision['reason']}")
    else:
        lines.append("decision  not deployed (gate failed); the champion is unchanged")
    lines.append(f"artifacts {store.describe(f'runs/{run_id}/')}")
    return "\n".join(lines)
