"""`ctp upload`, `ctp submit`, `ctp schedule`, `ctp monitor`: thin click wrappers over triggers.py.

Every option also reads an environment variable (the manifests' ConfigMap sets them), so the
CronJobs call just `ctp monitor --submit` and `ctp submit --trigger schedule`.
"""

from __future__ import annotations

import functools

import click

from components._shared.errors import ConfigError
from components._shared.store import DEFAULT_STORE
from pipelines.options import store_option
from pipelines.triggers import DEFAULT_EXPERIMENT, MonitorConfig

KFP_FIELDS = ("host", "token", "namespace", "pipeline_name", "experiment")


# Defaults from the pipeline module, read only when a command runs: importing it loads kfp (seconds).
def pipeline_name_default() -> str:
    from pipelines.continuous_training import PIPELINE_NAME

    return PIPELINE_NAME


def cluster_store_default() -> str:
    from pipelines.continuous_training import CLUSTER_STORE

    return CLUSTER_STORE


def kfp_options(func):
    """--host/--token/--namespace/--pipeline-name/--experiment, handed over as one dict ``kfp``."""
    options = [
        click.option("--host", envvar="KFP_HOST", default="", help="KFP API, e.g. http://ml-pipeline.kubeflow:8888 "
                     "[env KFP_HOST]"),
        click.option("--token", envvar="KFP_TOKEN", default="", show_default=False,
                     help="Bearer token [env KFP_TOKEN; prefer the env]. Default: the in-cluster service-account "
                          "token at $KF_PIPELINES_SA_TOKEN_PATH, when mounted."),
        click.option("--namespace", envvar="CTP_NAMESPACE", default="", help="Multi-user KFP profile namespace "
                     "[env CTP_NAMESPACE]"),
        click.option("--pipeline-name", envvar="CTP_PIPELINE_NAME", default=pipeline_name_default,
                     help="Default: the compiled pipeline's name [env CTP_PIPELINE_NAME]"),
        click.option("--experiment", envvar="CTP_EXPERIMENT", default=DEFAULT_EXPERIMENT, show_default=True,
                     help="[env CTP_EXPERIMENT]"),
    ]

    @functools.wraps(func)
    def wrapper(**kwargs):
        kfp = {name: kwargs.pop(name) for name in KFP_FIELDS}
        return func(kfp=kfp, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def data_options(store_default):
    def decorate(func):
        func = click.option("--model", "model_name", envvar="CTP_MODEL", default="digits", show_default=True,
                            help="[env CTP_MODEL]")(func)
        func = click.option("--dataset", envvar="CTP_DATASET", default="digits", show_default=True,
                            help="[env CTP_DATASET]")(func)
        return store_option("Store the runs read and write: s3://bucket/prefix (MINIO_* env) [env CTP_STORE]",
                            store_default)(func)
    return decorate


def run_source_options(func):
    func = click.option("--package", type=click.Path(dir_okay=False), default=None,
                        help="Send this compiled YAML with the run instead of an uploaded version.")(func)
    func = click.option("--version", "version_name", default="",
                        help="Uploaded pipeline version to run. Default: the newest.")(func)
    return click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                        help="Another pipeline parameter, e.g. --param epochs=5 (repeatable).")(func)


def _connect(kfp: dict):
    from pipelines.triggers import KfpSettings, connect

    return connect(KfpSettings(**kfp))


def _pipeline_ref(kfp_client, version_name: str, package: str | None):
    from pipelines.triggers import PipelineRef, resolve_pipeline

    if package:
        if version_name:
            raise ConfigError("--package and --version name two different pipelines", hint="pass one of them")
        return PipelineRef(package=package)
    return resolve_pipeline(kfp_client, version_name)


def _cluster_store(store_uri: str) -> str:
    if not store_uri.startswith("s3://"):
        raise ConfigError(f"store {store_uri!r} is not reachable from cluster runs",
                          hint="use --store s3://bucket/prefix (or CTP_STORE) with the MINIO_* settings")
    return store_uri


@click.command("upload")
@kfp_options
@click.option("--version", "version_name", default="",
              help="Version name, e.g. the commit SHA. Default: UTC time + content hash. A name that exists "
                   "is left as it is.")
@click.option("--description", default="")
@click.argument("package", required=False, type=click.Path(dir_okay=False))
def upload_command(kfp, version_name, description, package):
    """Upload PACKAGE (default: compile the pipeline now) as a new pipeline or a new version of it."""
    from pipelines.triggers import pipeline_package, upload

    client = _connect(kfp)
    with pipeline_package(package) as path:
        result = upload(client, path, version_name, description)
    click.echo(f"{result.action}: pipeline {kfp['pipeline_name']} ({result.pipeline_id}) "
               f"version {result.version_name} ({result.version_id})")


@click.command("submit")
@kfp_options
@data_options(cluster_store_default)
@run_source_options
@click.option("--trigger", default="manual", show_default=True, help="Recorded in the model card.")
@click.option("--evidence-uri", default="", help="What prompted the run (e.g. a drift report); kept in the card.")
@click.option("--run-id", default="", help="Default: a new run-<time>-<random> id.")
def submit_command(kfp, store_uri, dataset, model_name, params, version_name, package, trigger, evidence_uri,
                   run_id):
    """Submit one run to KFP with its data fingerprint computed now."""
    from components._shared.store import open_store
    from pipelines.local_run import new_run_id
    from pipelines.triggers import parse_params, run_parameters, submit

    store = open_store(_cluster_store(store_uri))
    parameters = run_parameters(store, dataset, model_name, trigger=trigger, run_id=run_id or new_run_id(),
                                evidence_uri=evidence_uri, extra=parse_params(params))
    client = _connect(kfp)
    submitted = submit(client, _pipeline_ref(client, version_name, package), parameters)
    click.echo(f"submitted run {submitted.run_id} (KFP run {submitted.kfp_run_id}), "
               f"data {parameters['data_fingerprint']}")


@click.command("schedule")
@kfp_options
@data_options(cluster_store_default)
@run_source_options
@click.argument("name")
@click.option("--cron", required=True, help='Five fields, UTC, e.g. "0 3 * * *" (03:00 daily).')
def schedule_command(kfp, store_uri, dataset, model_name, params, version_name, package, name, cron):
    """Create or replace the recurring run NAME: one run at a time, missed slots not caught up.

    Each run ingests whatever data is there when it starts (no fingerprint is pinned)."""
    from pipelines.triggers import parse_params, schedule

    parameters = {"store_uri": _cluster_store(store_uri), "dataset": dataset, "model_name": model_name,
                  "trigger": "schedule", **parse_params(params)}
    client = _connect(kfp)
    result = schedule(client, name, cron, _pipeline_ref(client, version_name, package), parameters)
    replaced = f", replaced {len(result.replaced)} older" if result.replaced else ""
    click.echo(f"scheduled {name} ({result.recurring_run_id}) cron '{result.cron}'{replaced}")


@click.command("monitor")
@kfp_options
@data_options(DEFAULT_STORE)
@click.option("--submit", "to_kfp", is_flag=True, help="Submit a drift-triggered run to KFP (the CronJob).")
@click.option("--local", "to_local", is_flag=True, help="Run the pipeline here instead (kfp.local).")
@click.option("--version", "version_name", default="", help="With --submit: pipeline version. Default: newest.")
@click.option("--window-rows", default=MonitorConfig.window_rows, show_default=True,
              help="Newest traffic examples compared with the champion's reference.")
@click.option("--cooldown-minutes", default=MonitorConfig.cooldown_minutes, show_default=True,
              help="No new run until this long after the last one started.")
@click.option("--p-val", default=MonitorConfig.p_val, show_default=True, help="Drift test significance.")
@click.option("--epochs", default=10, show_default=True, help="With --local.")
@click.option("--nproc-per-node", default=2, show_default=True, help="With --local: torchrun processes.")
@click.option("--pipeline-root", default="./.ctp-runs", show_default=True, help="With --local.")
def monitor_command(kfp, store_uri, dataset, model_name, to_kfp, to_local, version_name, window_rows,
                    cooldown_minutes, p_val, epochs, nproc_per_node, pipeline_root):
    """Compare recent traffic with the champion's reference; on drift, start one run per evidence.

    Without --submit or --local it only writes the drift report."""
    from components._shared.store import open_store
    from pipelines.local_run import LocalRunOptions
    from pipelines.triggers import KfpTarget, LocalTarget, monitor

    if to_kfp and to_local:
        raise ConfigError("--submit and --local both given", hint="pass one: --submit (KFP) or --local (here)")
    config = MonitorConfig(dataset=dataset, model=model_name, window_rows=window_rows,
                           cooldown_minutes=cooldown_minutes, p_val=p_val)
    store = open_store(_cluster_store(store_uri) if to_kfp else store_uri)
    target = None
    if to_kfp:
        client = _connect(kfp)
        target = KfpTarget(client, _pipeline_ref(client, version_name, None), store, config)
    elif to_local:
        target = LocalTarget(LocalRunOptions(store_uri=store.uri, dataset=dataset, model_name=model_name,
                                             epochs=epochs, nproc_per_node=nproc_per_node,
                                             pipeline_root=pipeline_root))
    outcome = monitor(store, config, target)
    if to_local and outcome.action == "submitted":
        click.echo(target.summary)
    click.echo(outcome.one_line())

