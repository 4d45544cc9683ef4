"""The monitor: checks every retraining trigger against the champion, writes one report per check
to the store, and starts at most one run per piece of evidence (on a KFP host, or here through
kfp.local). The click command is in ``pipelines/cli/monitor.py``.

Triggers (TRIGGERS, in the order that names a run when several fire):
- performance: the champion's accuracy on labelled rows newer than its watermark is below
  ``min_accuracy`` or more than ``max_drop`` below its test accuracy (pipelines/label_triggers.py);
- drift: recent traffic against the champion's reference, as validate-data decides;
- new_labels: at least ``min_new_rows`` labelled rows newer than the watermark.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Protocol

from components._shared.errors import AlreadyExists
from components._shared.registry import new_version_id, utc_now
from components._shared.store import Store
from pipelines.kfp_api import Kfp, PipelineRef, pipeline_spec, run_is_active, submit
from pipelines.monitor_config import MonitorConfig
from pipelines.run_params import new_run_id, run_parameters, spec_defaults

TRIGGERS = ("performance", "drift", "new_labels")  # the first that fired is the run's `trigger`


class RunTarget(Protocol):
    """Where the monitor starts runs: a KFP host, or this machine."""

    name: str

    def start(self, evidence_uri: str, run_id: str, trigger: str = "drift") -> str:
        """Start one triggered run; returns the handle ``is_running`` takes."""

    def is_running(self, handle: str) -> bool: ...


class KfpTarget:
    name = "kfp"

    def __init__(self, kfp: Kfp, ref: PipelineRef, store: Store, config: MonitorConfig, params: dict | None = None):
        self.kfp, self.ref, self.store, self.config = kfp, ref, store, config
        self.params = params or {}  # other run parameters, e.g. deploy_target from the CronJob

    def start(self, evidence_uri: str, run_id: str, trigger: str = "drift") -> str:
        params = run_parameters(
            self.store,
            spec_defaults(pipeline_spec(self.kfp, self.ref)),
            dataset=self.config.dataset,
            model_name=self.config.model_name,
            trigger=trigger,
            run_id=run_id,
            evidence_uri=evidence_uri,
            extra=self.params,
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

    def start(self, evidence_uri: str, run_id: str, trigger: str = "drift") -> str:
        from pipelines.local_run import run_locally

        self.summary = run_locally(
            dataclasses.replace(self.options, trigger=trigger, evidence_uri=evidence_uri), run_id=run_id
        )
        return run_id

    def is_running(self, handle: str) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class MonitorOutcome:
    action: str  # submitted | no_trigger | duplicate | cooldown | run_in_progress | no_champion | dry_run
    reason: str
    trigger: str = ""  # the trigger that names the run (the first of TRIGGERS that fired)
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
    """One check's report (None: no champion): the newest traffic window against the champion's
    reference sample (``drift``, ``window``), the labelled data newer than its watermark
    (``labels``, ``performance``, ``new_labels``), and which triggers fired (``fired``, ``trigger``)."""
    from components.deploy_canary.core import recent_traffic
    from components.validate_data import drift
    from components.validate_data.core import load_champion

    champion = load_champion(store, config.model_name)
    if champion is None:
        return None
    images, batches = recent_traffic(store, config.dataset, config.window_rows)
    if champion.reference is None:
        result = {"decision": "no_reference", "is_drift": False, "reason": "the champion has no reference sample"}
    elif images is None:
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
    report = {
        "model": config.model_name,
        "dataset": config.dataset,
        "reference_version": champion.version,
        "window": window,
        "drift": result,
        **_label_triggers(store, config, champion.version, champion.card),
        "created_at": utc_now(),
    }
    fired = [name for name in TRIGGERS if _fired(report, name)]
    return {**report, "fired": fired, "trigger": fired[0] if fired else ""}


def _fired(report: dict, trigger: str) -> bool:
    return bool(report["drift"]["is_drift"] if trigger == "drift" else report[trigger]["fired"])


def _label_triggers(store: Store, config: MonitorConfig, version: str, card: dict) -> dict:
    from pipelines import label_triggers

    if not config.reads_labels:  # neither trigger on: the check reads no labelled data
        off = {"enabled": False, "fired": False, "decision": "off"}
        return {"labels": {}, "performance": off, "new_labels": off}
    labels, batches = label_triggers.labels_section(store, config, card)
    return {
        "labels": labels,
        "performance": label_triggers.performance_evidence(store, config, version, card, batches),
        "new_labels": label_triggers.new_labels_evidence(config, labels),
    }


# What of each label trigger's evidence makes it the same evidence (not its bars or wording).
_EVIDENCE_FIELDS = {"performance": ("batches", "rows", "correct"), "new_labels": ("batches", "rows")}


def dedupe_key(report: dict) -> str:
    """Same champion, and for each trigger that fired the same data and statistics: the same
    evidence. Drift's: the traffic window and its statistics (a drift-only key is what it was
    before the label triggers, so their claims stay valid); the label triggers': the new batches
    and what was counted on them."""
    fired = report.get("fired") or ["drift"]
    evidence: dict = {"reference": report["reference_version"]}
    if "drift" in fired:
        evidence |= {"batches": report["window"]["batches"], "drift": report["drift"]}
    for name, fields in _EVIDENCE_FIELDS.items():
        if name in fired:
            evidence[name] = {field: report[name].get(field) for field in fields}
    digest = hashlib.sha256(json.dumps(evidence, sort_keys=True).encode()).hexdigest()[:16]
    watermark = report["window"]["watermark"] if "drift" in fired else report["labels"]["newest"]
    return f"{watermark}-{digest}"


def summary(report: dict) -> str:
    """One clause per enabled trigger: what it decided."""
    drift = report["drift"]
    parts = [f"drift: {drift['decision']} over traffic batches {report['window']['batches']}"]
    parts += [f"{name}: {report[name]['reason']}" for name in ("performance", "new_labels") if report[name]["enabled"]]
    return "; ".join(parts)


def monitor(store: Store, config: MonitorConfig, target: RunTarget | None) -> MonitorOutcome:
    """Check for drift, record the report, and start at most one run for it (target None: report only)."""
    report = drift_report(store, config)
    if report is None:
        return MonitorOutcome("no_champion", f"model {config.model_name} has no champion with a reference sample yet")
    key = dedupe_key(report)
    report_key = f"{monitor_prefix(config.model_name)}reports/{new_version_id()}.json"
    store.put_json(report_key, {**report, "dedupe_key": key}, create_only=True)
    found = dict(report_uri=store.describe(report_key), dedupe_key=key, report=report, trigger=report["trigger"])
    if not report["fired"]:
        return MonitorOutcome("no_trigger", summary(report), **found)
    if target is None:
        return MonitorOutcome(
            "dry_run", f"{', '.join(report['fired'])} fired; pass --submit or --local to start a run", **found
        )
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
        "trigger": found["trigger"],
        "fired": found["report"]["fired"],
        "run_id": run_id,
        "target": target.name,
        "claimed_at": utc_now(),
    }
    try:
        store.put_json(marker, claim, create_only=True)
    except AlreadyExists:
        return MonitorOutcome("duplicate", "another monitor claimed this evidence first", **found)
    try:
        handle = target.start(found["report_uri"], run_id, found["trigger"])
    except BaseException:
        store.delete(marker)
        raise
    record = {**claim, "handle": handle, "submitted_at": utc_now()}
    store.put_json(marker, record)
    store.put_json(f"{monitor_prefix(config.model_name)}last-submission.json", record)
    fired = ", ".join(found["report"]["fired"])
    return MonitorOutcome(
        "submitted",
        f"{fired} fired; started run {run_id} on {target.name} (trigger {found['trigger']})",
        run_id=run_id,
        handle=handle,
        **found,
    )
