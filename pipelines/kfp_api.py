"""The Kubeflow Pipelines API: upload, submit and schedule through the real ``kfp.Client``.

kfp is imported lazily (seconds). Nothing here reads the environment except the in-cluster
token path that ``kfp.Client`` itself uses; the click commands are in ``pipelines/cli/kfp.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from components._shared.errors import ConfigError, CtpError

DEFAULT_EXPERIMENT = "ctp"
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
            raise ConfigError(
                "no Kubeflow Pipelines host",
                hint="pass --host or set KFP_HOST, e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888",
            )


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
        raise KfpError(
            f"{host} answered {err.status}: {detail}",
            hint="check --host, KFP_TOKEN (or the service-account token) and the namespace",
        ) from None
    except urllib3.exceptions.HTTPError as err:
        raise KfpError(
            f"cannot reach {host}: {err}",
            code="KFP_UNREACHABLE",
            hint="check --host / KFP_HOST and that the KFP API is reachable from here",
        ) from None


# --- upload -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Uploaded:
    pipeline_id: str
    version_id: str
    version_name: str
    action: str  # "created" (new pipeline), "added" (new version), "exists" (that version name was there)


@contextlib.contextmanager
def pipeline_package(path: str | None, settings=None) -> Iterator[str]:
    """The given compiled YAML, or the pipeline compiled with these (default) cluster settings."""
    if path:
        if not Path(path).is_file():
            raise ConfigError(
                f"pipeline package {path} does not exist",
                code="PACKAGE_NOT_FOUND",
                hint="compile it with `ctp compile -o PATH` or omit it to compile with defaults",
            )
        yield path
        return
    from pipelines.continuous_training import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="ctp-compile-") as tmp:
        yield compile_pipeline(str(Path(tmp) / "continuous_training.yaml"), *([settings] if settings else []))


def default_version_name(package: str) -> str:
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:8]
    return f"{dt.datetime.now(dt.UTC):%Y%m%dt%H%M%Sz}-{digest}"


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
        version = client.upload_pipeline_version(
            package, version_name, pipeline_id=pipeline_id, description=description or None
        )
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
            raise KfpError(
                f"no pipeline named {name!r} on {host}",
                code="KFP_PIPELINE_NOT_FOUND",
                hint="upload it with `ctp upload`, or pass --package with a compiled YAML",
            )
        if not version_name:
            return PipelineRef(pipeline_id, latest_version(kfp.client, pipeline_id).pipeline_version_id)
        version = find_version(kfp.client, pipeline_id, version_name)
    if version is None:
        raise KfpError(
            f"pipeline {name!r} has no version {version_name!r}",
            code="KFP_PIPELINE_NOT_FOUND",
            hint="list versions in the KFP dashboard, or omit --version for the newest",
        )
    return PipelineRef(pipeline_id, version.pipeline_version_id)


def pipeline_spec(kfp: Kfp, ref: PipelineRef) -> dict:
    """The compiled pipeline a run will start from: its parameters' defaults are the run's."""
    from pipelines.run_params import read_package

    if ref.package:
        return read_package(ref.package)
    with kfp_errors(kfp.settings.host):
        version = kfp.client.get_pipeline_version(ref.pipeline_id, ref.version_id)
    stored = version.pipeline_spec or {}
    return stored.get("pipeline_spec", stored)  # KFP stores {pipeline_spec, platform_spec} when both exist


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
        run = kfp.client.run_pipeline(experiment, job_name=parameters["run_id"], params=parameters, **ref.run_kwargs())
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
    raise ConfigError(
        f"cron expression {expression!r} has {len(fields)} fields",
        code="CRON_INVALID",
        hint='use five fields (minute hour day month weekday), e.g. "0 3 * * *"',
    )


def recurring_runs_named(client, experiment: str, name: str) -> list:
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(
            experiment_id=experiment, page_size=100, page_token=token, filter=_name_filter(name)
        )
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
        new = client.create_recurring_run(
            experiment,
            name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=parameters,
            enabled=True,
            **ref.run_kwargs(),
        )
        for stale in old:
            client.delete_recurring_run(stale.recurring_run_id)
    return Scheduled(new.recurring_run_id, cron, [r.recurring_run_id for r in old])
