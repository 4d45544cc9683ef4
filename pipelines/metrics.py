"""Prometheus metrics of the CronJobs (the drift monitor, the inference-log compaction), pushed to a
Pushgateway when ``--pushgateway URL`` / ``CTP_PUSHGATEWAY`` is set.

Each job builds its own ``CollectorRegistry`` (never the process-global one) and pushes it with
``pushadd_to_gateway`` (HTTP POST): metrics of the same name in the job's group are replaced,
others are kept, so a failed run's push leaves the last success time in place. A failed push
is a warning on stderr; it never fails the job. Every metric name is defined once, in METRICS;
the Grafana dashboard (manifests/monitoring/ctp-dashboard.json) may query only these.
"""

from __future__ import annotations

import sys
import time

# name -> (help, label names). All gauges: a pushed value stands until the next push.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ctp_job_last_success_timestamp_seconds": ("When the job last finished without error.", ("model",)),
    "ctp_job_last_failure_timestamp_seconds": ("When the job last failed.", ("model", "code")),
    "ctp_monitor_last_check_timestamp_seconds": (
        "When the monitor last compared traffic with the champion.",
        ("model",),
    ),
    "ctp_monitor_drift": ("1 when the last check found drift, 0 when not.", ("model", "decision")),
    "ctp_monitor_min_p_value": ("Smallest per-feature KS p-value of the last check.", ("model",)),
    "ctp_monitor_window_rows": ("Traffic rows in the last check's window.", ("model",)),
    "ctp_monitor_trigger_fired": (
        "1 when the trigger fired in the last check, 0 when not, per enabled trigger.",
        ("model", "trigger"),
    ),
    "ctp_monitor_champion_accuracy": (
        "Champion accuracy on labelled rows newer than its training data, when the last check scored them.",
        ("model",),
    ),
    "ctp_monitor_new_label_rows": ("Labelled rows newer than the champion's training data.", ("model",)),
    "ctp_monitor_last_run_started_timestamp_seconds": (
        "When the monitor last started a run, per trigger (changes() counts runs).",
        ("model", "trigger"),
    ),
    "ctp_compaction_last_run_timestamp_seconds": ("When the log compaction last finished.", ("model",)),
    "ctp_compaction_objects": ("Raw log objects compacted by the last run.", ("model",)),
    "ctp_compaction_rows": ("Rows written by the last run, per kind (traffic, predictions).", ("model", "kind")),
    "ctp_compaction_rows_per_second": ("Compaction rate of the last run (traffic rows per second).", ("model",)),
    "ctp_compaction_deferred_objects": ("Raw objects younger than the minimum age, left for the next run.", ("model",)),
    "ctp_compaction_findings": ("Problems in the raw log found by the last run, per code.", ("model", "code")),
}
JOB_MONITOR, JOB_COMPACT = "ctp-monitor", "ctp-log-compact"


class Metrics:
    """One job's registry: ``set(name, value, **labels)`` with names from METRICS only."""

    def __init__(self, job: str, model: str):
        from prometheus_client import CollectorRegistry

        self.job, self.model = job, model
        self.registry = CollectorRegistry()
        self._gauges: dict = {}

    def set(self, name: str, value: float, **labels: str) -> None:
        from prometheus_client import Gauge

        help_text, label_names = METRICS[name]
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, help_text, label_names, registry=self.registry)
        self._gauges[name].labels(**{"model": self.model, **labels}).set(value)

    def push(self, url: str) -> bool:
        """Push to the Pushgateway at ``url`` (no-op without one). Never raises."""
        if not url:
            return False
        from prometheus_client import pushadd_to_gateway

        try:
            pushadd_to_gateway(
                url, job=self.job, registry=self.registry, grouping_key={"model": self.model}, timeout=10
            )
            return True
        except Exception as err:  # noqa: BLE001 (metrics must never fail the job)
            print(f"ctp: warning: METRICS_PUSH_FAILED: pushgateway {url}: {err}", file=sys.stderr)
            return False


def monitor_metrics(model: str, outcome, now: float | None = None) -> Metrics:
    now = time.time() if now is None else now
    metrics = Metrics(JOB_MONITOR, model)
    metrics.set("ctp_job_last_success_timestamp_seconds", now)
    report = getattr(outcome, "report", None)
    if report is not None:
        drift = report["drift"]
        metrics.set("ctp_monitor_last_check_timestamp_seconds", now)
        metrics.set("ctp_monitor_drift", 1.0 if drift.get("is_drift") else 0.0, decision=drift.get("decision", ""))
        metrics.set("ctp_monitor_window_rows", report["window"]["rows"])
        min_p = (drift.get("features") or {}).get("min_p_val")
        if min_p is not None:
            metrics.set("ctp_monitor_min_p_value", min_p)
        fired = report.get("fired", ["drift"] if drift.get("is_drift") else [])
        metrics.set("ctp_monitor_trigger_fired", 1.0 if "drift" in fired else 0.0, trigger="drift")
        for trigger in ("performance", "new_labels"):
            if (report.get(trigger) or {}).get("enabled"):
                metrics.set("ctp_monitor_trigger_fired", 1.0 if trigger in fired else 0.0, trigger=trigger)
        accuracy = (report.get("performance") or {}).get("accuracy")
        if accuracy is not None:
            metrics.set("ctp_monitor_champion_accuracy", accuracy)
        if (report.get("labels") or {}).get("rows") is not None:
            metrics.set("ctp_monitor_new_label_rows", report["labels"]["rows"])
    if outcome.action == "submitted":
        trigger = getattr(outcome, "trigger", "") or "drift"
        metrics.set("ctp_monitor_last_run_started_timestamp_seconds", now, trigger=trigger)
    return metrics


def compaction_metrics(model: str, report, now: float | None = None) -> Metrics:
    now = time.time() if now is None else now
    metrics = Metrics(JOB_COMPACT, model)
    metrics.set("ctp_job_last_success_timestamp_seconds", now)
    metrics.set("ctp_compaction_last_run_timestamp_seconds", now)
    metrics.set("ctp_compaction_objects", report.objects)
    metrics.set("ctp_compaction_rows", report.traffic_rows, kind="traffic")
    metrics.set("ctp_compaction_rows", report.prediction_rows, kind="predictions")
    metrics.set("ctp_compaction_rows_per_second", report.traffic_rows / report.seconds if report.seconds else 0.0)
    metrics.set("ctp_compaction_deferred_objects", report.deferred)
    from pipelines.inference_log import FINDING_CODES

    for code in FINDING_CODES:  # every code, zeros included: a push replaces the whole family
        finding = report.findings.get(code)
        metrics.set("ctp_compaction_findings", finding.count if finding else 0, code=code)
    return metrics


def failure_metrics(job: str, model: str, code: str, now: float | None = None) -> Metrics:
    metrics = Metrics(job, model)
    metrics.set("ctp_job_last_failure_timestamp_seconds", time.time() if now is None else now, code=code or "ERROR")
    return metrics


def pushgateway_option(func):
    import click

    return click.option(
        "--pushgateway",
        envvar="CTP_PUSHGATEWAY",
        default="",
        help="Push this job's metrics to the Prometheus Pushgateway at URL, e.g. "
        "http://pushgateway.monitoring:9091 [env CTP_PUSHGATEWAY]. A failed push only warns.",
    )(func)
