"""The drift monitor: compares recent traffic with the champion's reference using validate-data's
drift code, writes its report to the store, and starts at most one run per piece of evidence
(on a KFP host, or here through kfp.local). The click command is in ``pipelines/cli/monitor.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Protocol

from components._shared.errors import AlreadyExists, ConfigError
from components._shared.registry import new_version_id, utc_now
from components._shared.store import Store
from pipelines.kfp_api import Kfp, PipelineRef, pipeline_spec, run_is_active, submit
from pipelines.run_params import new_run_id, run_parameters, spec_defaults


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    dataset: str = "digits"
    model_name: str = "digits"
    window_rows: int = 500  # newest traffic examples compared with the reference
    cooldown_minutes: float = 60.0
    p_val: float = 0.05

    def __post_init__(self):
        if self.window_rows < 1:
            raise ConfigError(f"window_rows={self.window_rows}; must be at least 1")
        if self.cooldown_minutes < 0:
            raise ConfigError(f"cooldown_minutes={self.cooldown_minutes}; must be 0 or more")


class RunTarget(Protocol):
    """Where the monitor starts runs: a KFP host, or this machine."""

    name: str

    def start(self, evidence_uri: str, run_id: str) -> str:
        """Start one drift-triggered run; returns the handle ``is_running`` takes."""

    def is_running(self, handle: str) -> bool: ...


class KfpTarget:
    name = "kfp"

    def __init__(self, kfp: Kfp, ref: PipelineRef, store: Store, config: MonitorConfig):
        self.kfp, self.ref, self.store, self.config = kfp, ref, store, config

    def start(self, evidence_uri: str, run_id: str) -> str:
        params = run_parameters(
            self.store,
            spec_defaults(pipeline_spec(self.kfp, self.ref)),
            dataset=self.config.dataset,
            model_name=self.config.model_name,
            trigger="drift",
            run_id=run_id,
            evidence_uri=evidence_uri,
        )
        return submit(self.kfp, self.ref, params).kfp_run_id

    def is_running(self, handle: str) -> bool:
        return run_is_active(self.kfp, handle)


class LocalTarget:
    """Runs the pipeline here through kfp.local; it has finished when start returns."""

    name = "local"

    def __init__(self, options):
        self.options = options  # pipelines.local_run.LocalRunOptions
        self.summary = ""

    def start(self, evidence_uri: str, run_id: str) -> str:
        from pipelines.local_run import run_locally

        self.summary = run_locally(
            dataclasses.replace(self.options, trigger="drift", evidence_uri=evidence_uri), run_id=run_id
        )
        return run_id

    def is_running(self, handle: str) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class MonitorOutcome:
    action: str  # submitted | no_drift | duplicate | cooldown | run_in_progress | no_champion | dry_run
    reason: str
    report_uri: str = ""
    dedupe_key: str = ""
    run_id: str = ""
    handle: str = ""
    report: dict | None = dataclasses.field(default=None, repr=False, compare=False)  # the check's report (metrics)

    def one_line(self) -> str:
        parts = [f"monitor: {self.action}: {self.reason}"]
        parts += [f"report {self.report_uri}"] if self.report_uri else []
        parts += [f"run {self.run_id}"] if self.run_id else []
        return "; ".join(parts)


def monitor_prefix(model: str) -> str:
    return f"monitor/{model}/"


def drift_report(store: Store, config: MonitorConfig) -> dict | None:
    """The newest traffic window against the champion's reference sample (None: no champion)."""
    from components.deploy_canary.core import recent_traffic
    from components.validate_data import drift
    from components.validate_data.core import load_champion

    champion = load_champion(store, config.model_name)
    if champion is None or champion.reference is None:
        return None
    images, batches = recent_traffic(store, config.dataset, config.window_rows)
    if images is None:
        result = {
            "decision": "no_traffic",
            "is_drift": False,
            "reason": f"no batches under {store.describe(f'traffic/{config.dataset}/')}",
        }
    else:  # as validate-data decides: KS on the champion's features decides, MMD (seeded) is a second opinion
        representation = champion.representation
        window = champion.represent(images)
        feature = drift.feature_drift(champion.reference_for(representation), window, config.p_val)
        result = {
            "decision": feature["features"]["decision"],
            "is_drift": feature["features"]["is_drift"],
            "representation": representation,
            **feature,
        }
    window = {
        "batches": batches,
        "watermark": batches[-1] if batches else "",
        "rows": 0 if images is None else len(images),
    }
    return {
        "model": config.model_name,
        "dataset": config.dataset,
        "reference_version": champion.version,
        "window": window,
        "drift": result,
        "created_at": utc_now(),
    }


def dedupe_key(report: dict) -> str:
    """Same reference, same traffic window, same statistics: the same evidence."""
    evidence = {
        "reference": report["reference_version"],
        "batches": report["window"]["batches"],
        "drift": report["drift"],
    }
    digest = hashlib.sha256(json.dumps(evidence, sort_keys=True).encode()).hexdigest()[:16]
    return f"{report['window']['watermark']}-{digest}"


def monitor(store: Store, config: MonitorConfig, target: RunTarget | None) -> MonitorOutcome:
    """Check for drift, record the report, and start at most one run for it (target None: report only)."""
    report = drift_report(store, config)
    if report is None:
        return MonitorOutcome("no_champion", f"model {config.model_name} has no champion with a reference sample yet")
    key = dedupe_key(report)
    report_key = f"{monitor_prefix(config.model_name)}reports/{new_version_id()}.json"
    store.put_json(report_key, {**report, "dedupe_key": key}, create_only=True)
    found = dict(report_uri=store.describe(report_key), dedupe_key=key, report=report)
    decision = report["drift"]["decision"]
    if not report["drift"]["is_drift"]:
        return MonitorOutcome("no_drift", f"{decision} over traffic batches {report['window']['batches']}", **found)
    if target is None:
        return MonitorOutcome("dry_run", "drift found; pass --submit or --local to start a run", **found)
    marker = f"{monitor_prefix(config.model_name)}submitted/{key}.json"
    if store.exists(marker):
        return MonitorOutcome("duplicate", f"a run was already started for this evidence ({marker})", **found)
    blocked = _blocked_by_last_run(store, config, target)
    if blocked:
        return MonitorOutcome(blocked[0], blocked[1], **found)
    return _start_once(store, config, target, marker, found)


def _blocked_by_last_run(store: Store, config: MonitorConfig, target: RunTarget) -> tuple[str, str] | None:
    found = store.get_json_with_etag(f"{monitor_prefix(config.model_name)}last-submission.json")
    if found is None:
        return None
    last = found[0]
    age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(last["claimed_at"])
    if age < dt.timedelta(minutes=config.cooldown_minutes):
        return "cooldown", (
            f"last run {last['run_id']} started {age.total_seconds() / 60:.0f} min ago; "
            f"cooldown is {config.cooldown_minutes:g} min"
        )
    if last["target"] == target.name and target.is_running(last["handle"]):
        return "run_in_progress", f"run {last['run_id']} ({last['handle']}) is still running"
    return None


def _start_once(store: Store, config: MonitorConfig, target: RunTarget, marker: str, found: dict) -> MonitorOutcome:
    """Claim the evidence with a create-only write first, so two monitors never both start a run;
    a failed start releases the claim and the next check tries again."""
    run_id = new_run_id()
    claim = {
        "dedupe_key": found["dedupe_key"],
        "report_uri": found["report_uri"],
        "run_id": run_id,
        "target": target.name,
        "claimed_at": utc_now(),
    }
    try:
        store.put_json(marker, claim, create_only=True)
    except AlreadyExists:
        return MonitorOutcome("duplicate", "another monitor claimed this evidence first", **found)
    try:
        handle = target.start(found["report_uri"], run_id)
    except BaseException:
        store.delete(marker)
        raise
    record = {**claim, "handle": handle, "submitted_at": utc_now()}
    store.put_json(marker, record)
    store.put_json(f"{monitor_prefix(config.model_name)}last-submission.json", record)
    return MonitorOutcome(
        "submitted", f"drift found; started run {run_id} on {target.name}", run_id=run_id, handle=handle, **found
    )
