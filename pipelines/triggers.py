"""Starting runs on a Kubeflow Pipelines host, and the drift monitor that starts them on evidence.

upload / submit / schedule talk to KFP through the real ``kfp.Client`` (imported lazily). The
monitor compares recent traffic with the champion's reference sample using validate-data's drift
code, writes its report to the store, and starts at most one run per piece of evidence. The
click commands are in ``triggers_cli.py``; nothing here reads the environment except the
in-cluster token path that ``kfp.Client`` itself uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Protocol

from components._shared.errors import AlreadyExists, ConfigError, CtpError
from components._shared.registry import new_version_id, utc_now
from components._shared.store import Store

DEFAULT_EXPERIMENT = "ctp"
DEFAULT_TEST_FRACTION = 0.2  # the pipeline's default; the fingerprint must be computed with the same one
ACTIVE_RUN_STATES = {"RUNTIME_STATE_UNSPECIFIED", "PENDING", "RUNNING", "PAUSED", "CANCELING"}


class KfpError(CtpError):
    code = "KFP_API"


# --- connecting ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KfpSettings:
    host: str
    pipeline_name: str  # pipelines.continuous_training.PIPELINE_NAME unless renamed at upload
    token: str = ""  # bearer token; "" = the in-cluster service-account token, when mounted
    namespace: str = ""  # multi-user KFP: the profile namespace runs belong to
    experiment: str = DEFAULT_EXPERIMENT

    def __post_init__(self):
        if not self.host:
            raise ConfigError("no Kubeflow Pipelines host", hint="pass --host or set KFP_HOST, e.g. "
                              "http://ml-pipeline.kubeflow.svc.cluster.local:8888")


@dataclasses.dataclass(frozen=True)
class Kfp:
    client: object  # kfp.Client
    settings: KfpSettings


def connect(settings: KfpSettings) -> Kfp:
    """A kfp.Client. With a host and no token, kfp.Client sends no credentials at all, so the
    projected service-account token (KF_PIPELINES_SA_TOKEN_PATH) is passed explicitly."""
    import warnings

    from kfp import Client
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    auth = {}
    token_path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH
    if settings.token:
        auth["existing_token"] = settings.token
    elif Path(token_path).is_file():
        auth["credentials"] = ServiceAccountTokenVolumeCredentials(token_path)
    with kfp_errors(settings.host), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
        return Kfp(Client(host=settings.host, namespace=settings.namespace or "kubeflow", **auth), settings)


@contextlib.contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """KFP API and connection failures as one line naming the host."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as err:
        detail = (err.body or err.reason or "").strip().replace("\n", " ")[:200]
        raise KfpError(f"{host} answered {err.status}: {detail}",
                       hint="check --host, KFP_TOKEN (or the service-account token) and the namespace") from None
    except urllib3.exceptions.HTTPError as err:
        raise KfpError(f"cannot reach {host}: {err}", code="KFP_UNREACHABLE",
                       hint="check --host / KFP_HOST and that the KFP API is reachable from here") from None


# --- upload -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Uploaded:
    pipeline_id: str
    version_id: str
    version_name: str
    action: str  # "created" (new pipeline), "added" (new version), "exists" (that version name was there)


@contextlib.contextmanager
def pipeline_package(path: str | None) -> Iterator[str]:
    """The given compiled YAML, or the pipeline compiled with default cluster settings."""
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"pipeline package {path} does not exist", code="PACKAGE_NOT_FOUND",
                              hint="compile it with `ctp compile -o PATH` or omit it to compile with defaults")
        yield path
        return
    from pipelines.continuous_training import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="ctp-compile-") as tmp:
        yield compile_pipeline(str(Path(tmp) / "continuous_training.yaml"))


def default_version_name(package: str) -> str:
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:8]
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dt%H%M%Sz}-{digest}"


def upload(kfp: Kfp, package: str, version_name: str = "", description: str = "") -> Uploaded:
    """A new pipeline, or a new version of the pipeline of that name. A version name that is
    already there is left alone (CI re-running the same commit uploads nothing)."""
    client, name = kfp.client, kfp.settings.pipeline_name
    version_name = version_name or default_version_name(package)
    with kfp_errors(kfp.settings.host):
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(package, pipeline_name=name, description=description or None)
            version = latest_version(client, pipeline.pipeline_id)  # KFP names the first version after the pipeline
            return Uploaded(pipeline.pipeline_id, version.pipeline_version_id, version.display_name, "created")
        existing = find_version(client, pipeline_id, version_name)
        if existing is not None:
            return Uploaded(pipeline_id, existing.pipeline_version_id, version_name, "exists")
        version = client.upload_pipeline_version(package, version_name, pipeline_id=pipeline_id,
                                                 description=description or None)
        return Uploaded(pipeline_id, version.pipeline_version_id, version_name, "added")


def _name_filter(name: str) -> str:
    """The filter kfp.Client itself builds for names (KFP's filter.proto as JSON)."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def find_version(client, pipeline_id: str, version_name: str):
    found = client.list_pipeline_versions(pipeline_id, page_size=100, filter=_name_filter(version_name))
    return next((v for v in found.pipeline_versions or [] if v.display_name == version_name), None)


def latest_version(client, pipeline_id: str):
    found = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
    if not found.pipeline_versions:
        raise KfpError(f"pipeline {pipeline_id} has no versions", hint="upload one with `ctp upload`")
    return found.pipeline_versions[0]


# --- what a run starts from -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PipelineRef:
    """An uploaded pipeline version, or a compiled YAML sent along with the run."""

    pipeline_id: str | None = None
    version_id: str | None = None
    package: str | None = None

    def run_kwargs(self) -> dict:
        if self.package:
            return {"pipeline_package_path": self.package}
        return {"pipeline_id": self.pipeline_id, "version_id": self.version_id}


def resolve_pipeline(kfp: Kfp, version_name: str = "") -> PipelineRef:
    """The named version of the uploaded pipeline, else its newest."""
    name, host = kfp.settings.pipeline_name, kfp.settings.host
    with kfp_errors(host):
        pipeline_id = kfp.client.get_pipeline_id(name)
        if pipeline_id is None:
            raise KfpError(f"no pipeline named {name!r} on {host}", code="KFP_PIPELINE_NOT_FOUND",
                           hint="upload it with `ctp upload`, or pass --package with a compiled YAML")
        if not version_name:
            return PipelineRef(pipeline_id, latest_version(kfp.client, pipeline_id).pipeline_version_id)
        version = find_version(kfp.client, pipeline_id, version_name)
    if version is None:
        raise KfpError(f"pipeline {name!r} has no version {version_name!r}", code="KFP_PIPELINE_NOT_FOUND",
                       hint="list versions in the KFP dashboard, or omit --version for the newest")
    return PipelineRef(pipeline_id, version.pipeline_version_id)


def run_parameters(store: Store, dataset: str, model: str, *, trigger: str, run_id: str, evidence_uri: str = "",
                   extra: dict | None = None) -> dict:
    """Parameters of one run. The data fingerprint is computed now, so KFP's cache reuses ingest
    and validation only for unchanged data, and ingest refuses data that changed since."""
    from components.ingest.core import compute_fingerprint

    extra = extra or {}
    fingerprint = compute_fingerprint(store, dataset, float(extra.get("test_fraction", DEFAULT_TEST_FRACTION)),
                                      float(extra.get("replay_fraction", 1.0)), model)
    return {"store_uri": store.uri, "dataset": dataset, "model_name": model, "data_fingerprint": fingerprint,
            "run_id": run_id, "trigger": trigger, "evidence_uri": evidence_uri, **extra}


def parse_params(pairs: tuple[str, ...] | list[str]) -> dict:
    """KEY=VALUE pairs; values are JSON when they parse (10, 0.5, true), else strings."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r} is not KEY=VALUE", hint="e.g. --param epochs=5")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


# --- submit -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Submitted:
    kfp_run_id: str
    run_id: str
    experiment_id: str


def experiment_id(kfp: Kfp) -> str:
    """The experiment runs are filed under (kfp.Client gets or creates it by name)."""
    settings = kfp.settings
    with kfp_errors(settings.host):
        return kfp.client.create_experiment(settings.experiment, namespace=settings.namespace or None).experiment_id


def submit(kfp: Kfp, ref: PipelineRef, parameters: dict) -> Submitted:
    """One run; its display name is the ctp run id, under which its artifacts land in the store."""
    experiment = experiment_id(kfp)
    with kfp_errors(kfp.settings.host):
        run = kfp.client.run_pipeline(experiment, job_name=parameters["run_id"], params=parameters,
                                      **ref.run_kwargs())
    return Submitted(run.run_id, parameters["run_id"], experiment)


def run_is_active(kfp: Kfp, kfp_run_id: str) -> bool:
    from kfp_server_api.exceptions import ApiException

    try:
        state = kfp.client.get_run(kfp_run_id).state
    except ApiException as err:
        if err.status == 404:  # deleted: nothing is running
            return False
        raise KfpError(f"cannot read the state of run {kfp_run_id}: {err.status} {err.reason}") from None
    return (state or "RUNTIME_STATE_UNSPECIFIED") in ACTIVE_RUN_STATES


# --- schedule -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Scheduled:
    recurring_run_id: str
    cron: str
    replaced: list[str]


def kfp_cron(expression: str) -> str:
    """KFP's scheduler (robfig/cron) reads six fields, seconds first; accept the usual five."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(f"cron expression {expression!r} has {len(fields)} fields", code="CRON_INVALID",
                      hint='use five fields (minute hour day month weekday), e.g. "0 3 * * *"')


def recurring_runs_named(client, experiment: str, name: str) -> list:
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(experiment_id=experiment, page_size=100, page_token=token,
                                          filter=_name_filter(name))
        found += [r for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token
        if not token:
            return found


def schedule(kfp: Kfp, name: str, cron: str, ref: PipelineRef, parameters: dict) -> Scheduled:
    """Exactly one recurring run called ``name``: at most one run at a time, no catch-up of missed
    slots. The KFP v2 API cannot update a recurring run, so a new one is created first and the
    old ones with that name are deleted after it (a failed create leaves the old schedule)."""
    cron = kfp_cron(cron)
    experiment = experiment_id(kfp)
    client = kfp.client
    with kfp_errors(kfp.settings.host):
        old = recurring_runs_named(client, experiment, name)
        new = client.create_recurring_run(experiment, name, cron_expression=cron, max_concurrency=1, no_catchup=True,
                                          params=parameters, enabled=True, **ref.run_kwargs())
        for stale in old:
            client.delete_recurring_run(stale.recurring_run_id)
    return Scheduled(new.recurring_run_id, cron, [r.recurring_run_id for r in old])


# --- drift monitor ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    dataset: str = "digits"
    model: str = "digits"
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
        params = run_parameters(self.store, self.config.dataset, self.config.model, trigger="drift", run_id=run_id,
                                evidence_uri=evidence_uri)
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

        self.summary = run_locally(dataclasses.replace(self.options, trigger="drift", evidence_uri=evidence_uri),
                                   run_id=run_id)
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

    champion = load_champion(store, config.model)
    if champion is None or champion.reference is None:
        return None
    images, batches = recent_traffic(store, config.dataset, config.window_rows)
    if images is None:
        result = {"decision": "no_traffic", "is_drift": False,
                  "reason": f"no batches under {store.describe(f'traffic/{config.dataset}/')}"}
    else:  # as validate-data decides: KS on the champion's features decides, MMD (seeded) is a second opinion
        representation = champion.representation
        window = champion.represent(images)
        feature = drift.feature_drift(champion.reference_for(representation), window, config.p_val)
        result = {"decision": feature["features"]["decision"], "is_drift": feature["features"]["is_drift"],
                  "representation": representation, **feature}
    window = {"batches": batches, "watermark": batches[-1] if batches else "",
              "rows": 0 if images is None else len(images)}
    return {"model": config.model, "dataset": config.dataset, "reference_version": champion.version,
            "window": window, "drift": result, "created_at": utc_now()}


def dedupe_key(report: dict) -> str:
    """Same reference, same traffic window, same statistics: the same evidence."""
    evidence = {"reference": report["reference_version"], "batches": report["window"]["batches"],
                "drift": report["drift"]}
    digest = hashlib.sha256(json.dumps(evidence, sort_keys=True).encode()).hexdigest()[:16]
    return f"{report['window']['watermark']}-{digest}"


def monitor(store: Store, config: MonitorConfig, target: RunTarget | None) -> MonitorOutcome:
    """Check for drift, record the report, and start at most one run for it (target None: report only)."""
    report = drift_report(store, config)
    if report is None:
        return MonitorOutcome("no_champion", f"model {config.model} has no champion with a reference sample yet")
    key = dedupe_key(report)
    report_key = f"{monitor_prefix(config.model)}reports/{new_version_id()}.json"
    store.put_json(report_key, {**report, "dedupe_key": key}, create_only=True)
    found = dict(report_uri=store.describe(report_key), dedupe_key=key)
    decision = report["drift"]["decision"]
    if not report["drift"]["is_drift"]:
        return MonitorOutcome("no_drift", f"{decision} over traffic batches {report['window']['batches']}", **found)
    if target is None:
        return MonitorOutcome("dry_run", "drift found; pass --submit or --local to start a run", **found)
    marker = f"{monitor_prefix(config.model)}submitted/{key}.json"
    if store.exists(marker):
        return MonitorOutcome("duplicate", f"a run was already started for this evidence ({marker})", **found)
    blocked = _blocked_by_last_run(store, config, target)
    if blocked:
        return MonitorOutcome(blocked[0], blocked[1], **found)
    return _start_once(store, config, target, marker, found)


def _blocked_by_last_run(store: Store, config: MonitorConfig, target: RunTarget) -> tuple[str, str] | None:
    found = store.get_json_with_etag(f"{monitor_prefix(config.model)}last-submission.json")
    if found is None:
        return None
    last = found[0]
    age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(last["claimed_at"])
    if age < dt.timedelta(minutes=config.cooldown_minutes):
        return "cooldown", (f"last run {last['run_id']} started {age.total_seconds() / 60:.0f} min ago; "
                            f"cooldown is {config.cooldown_minutes:g} min")
    if last["target"] == target.name and target.is_running(last["handle"]):
        return "run_in_progress", f"run {last['run_id']} ({last['handle']}) is still running"
    return None


def _start_once(store: Store, config: MonitorConfig, target: RunTarget, marker: str, found: dict) -> MonitorOutcome:
    """Claim the evidence with a create-only write first, so two monitors never both start a run;
    a failed start releases the claim and the next check tries again."""
    from pipelines.local_run import new_run_id

    run_id = new_run_id()
    claim = {"dedupe_key": found["dedupe_key"], "report_uri": found["report_uri"], "run_id": run_id,
             "target": target.name, "claimed_at": utc_now()}
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
    store.put_json(f"{monitor_prefix(config.model)}last-submission.json", record)
    return MonitorOutcome("submitted", f"drift found; started run {run_id} on {target.name}", run_id=run_id,
                          handle=handle, **found)
