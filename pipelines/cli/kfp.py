"""`ctp upload`, `ctp submit`, `ctp schedule`: thin click wrappers over pipelines/kfp_api.py.

Every option also reads an environment variable (the manifests' ConfigMap sets them), so the
CronJobs call just `ctp monitor --submit` and `ctp submit --trigger schedule`.
"""

from __future__ import annotations

import functools

import click

from components._shared.errors import ConfigError
from pipelines.cli.options import (
    cluster_options,
    cluster_settings,
    dataset_option,
    deploy_target_option,
    model_defaults_to_dataset,
    model_option,
    store_option,
    target_params,
)
from pipelines.kfp_api import DEFAULT_EXPERIMENT
from pipelines.run_params import DEFAULT_TRIGGER

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
        click.option(
            "--host",
            envvar="KFP_HOST",
            default="",
            help="KFP API, e.g. http://ml-pipeline.kubeflow:8888 [env KFP_HOST]",
        ),
        click.option(
            "--token",
            envvar="KFP_TOKEN",
            default="",
            show_default=False,
            help="Bearer token [env KFP_TOKEN; prefer the env]. Default: the in-cluster service-account "
            "token at $KF_PIPELINES_SA_TOKEN_PATH, when mounted.",
        ),
        click.option(
            "--namespace",
            envvar="CTP_NAMESPACE",
            default="",
            help="Multi-user KFP profile namespace [env CTP_NAMESPACE]",
        ),
        click.option(
            "--pipeline-name",
            envvar="CTP_PIPELINE_NAME",
            default=pipeline_name_default,
            help="Default: the compiled pipeline's name [env CTP_PIPELINE_NAME]",
        ),
        click.option(
            "--experiment",
            envvar="CTP_EXPERIMENT",
            default=DEFAULT_EXPERIMENT,
            show_default=True,
            help="[env CTP_EXPERIMENT]",
        ),
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
        func = model_option(envvar="CTP_MODEL", from_dataset=True)(model_defaults_to_dataset(func))
        func = dataset_option(envvar="CTP_DATASET")(func)
        return store_option(
            "Store the runs read and write: s3://bucket/prefix (MINIO_* env) [env CTP_STORE]", store_default
        )(func)

    return decorate


def run_source_options(func):
    func = click.option(
        "--package",
        type=click.Path(dir_okay=False),
        default=None,
        help="Send this compiled YAML with the run instead of an uploaded version.",
    )(func)
    func = click.option(
        "--version", "version_name", default="", help="Uploaded pipeline version to run. Default: the newest."
    )(func)
    return click.option(
        "--param",
        "params",
        multiple=True,
        metavar="KEY=VALUE",
        help="Another pipeline parameter, e.g. --param epochs=5 (repeatable).",
    )(func)


def connect(kfp: dict):
    from pipelines import kfp_api

    return kfp_api.connect(kfp_api.KfpSettings(**kfp))


def pipeline_ref(kfp_client, version_name: str, package: str | None):
    from pipelines.kfp_api import PipelineRef, resolve_pipeline

    if package:
        if version_name:
            raise ConfigError("--package and --version name two different pipelines", hint="pass one of them")
        return PipelineRef(package=package)
    return resolve_pipeline(kfp_client, version_name)


def cluster_store(store_uri: str) -> str:
    if not store_uri.startswith("s3://"):
        raise ConfigError(
            f"store {store_uri!r} is not reachable from cluster runs",
            hint="use --store s3://bucket/prefix (or CTP_STORE) with the MINIO_* settings",
        )
    return store_uri


@click.command("upload")
@kfp_options
@click.option(
    "--version",
    "version_name",
    default="",
    help="Version name, e.g. the commit SHA. Default: UTC time + content hash. A name that exists is left as it is.",
)
@click.option("--description", default="")
@cluster_options
@click.argument("package", required=False, type=click.Path(dir_okay=False))
def upload_command(kfp, version_name, description, package, **options):
    """Upload PACKAGE (default: compile the pipeline now, with the cluster options `ctp compile`
    takes) as a new pipeline or a new version of it."""
    from pipelines.kfp_api import pipeline_package, upload

    settings, given = cluster_settings(**options)
    if package and given:
        raise ConfigError(
            "cluster and image options apply when ctp upload compiles", hint="give them to `ctp compile` instead"
        )
    client = connect(kfp)
    with pipeline_package(package, settings) as path:
        result = upload(client, path, version_name, description)
    click.echo(
        f"{result.action}: pipeline {kfp['pipeline_name']} ({result.pipeline_id}) "
        f"version {result.version_name} ({result.version_id})"
    )


@click.command("submit")
@kfp_options
@data_options(cluster_store_default)
@run_source_options
@click.option("--trigger", default=DEFAULT_TRIGGER, show_default=True, help="Recorded in the model card.")
@click.option("--evidence-uri", default="", help="What prompted the run (e.g. a drift report); kept in the card.")
@click.option("--run-id", default="", help="Default: a new run-<time>-<random> id.")
@click.option("--force", is_flag=True, help="Train even when no batch is newer than the champion's (else: skip).")
@deploy_target_option
def submit_command(
    kfp,
    store_uri,
    dataset,
    model_name,
    params,
    version_name,
    package,
    trigger,
    evidence_uri,
    run_id,
    force,
    deploy_target,
):
    """Submit one run to KFP with its data fingerprint computed now."""
    from components._shared.store import open_store
    from pipelines.kfp_api import pipeline_spec, submit
    from pipelines.run_params import new_run_id, parse_params, run_parameters, spec_defaults

    store = open_store(cluster_store(store_uri))
    client = connect(kfp)
    ref = pipeline_ref(client, version_name, package)
    parameters = run_parameters(
        store,
        spec_defaults(pipeline_spec(client, ref)),
        dataset=dataset,
        model_name=model_name,
        trigger=trigger,
        run_id=run_id or new_run_id(),
        evidence_uri=evidence_uri,
        extra={**({"force": True} if force else {}), **target_params(deploy_target), **parse_params(params)},
    )
    submitted = submit(client, ref, parameters)
    click.echo(
        f"submitted run {submitted.run_id} (KFP run {submitted.kfp_run_id}), data {parameters['data_fingerprint']}"
    )


@click.command("schedule")
@kfp_options
@data_options(cluster_store_default)
@run_source_options
@click.argument("name")
@click.option("--cron", required=True, help='Five fields, UTC, e.g. "0 3 * * *" (03:00 daily).')
def schedule_command(kfp, store_uri, dataset, model_name, params, version_name, package, name, cron):
    """Create or replace the recurring run NAME: one run at a time, missed slots not caught up.

    Each run ingests whatever data is there when it starts (no fingerprint is pinned)."""
    from pipelines.kfp_api import schedule
    from pipelines.run_params import parse_params

    parameters = {
        "store_uri": cluster_store(store_uri),
        "dataset": dataset,
        "model_name": model_name,
        "trigger": "schedule",
        **parse_params(params),
    }
    client = connect(kfp)
    result = schedule(client, name, cron, pipeline_ref(client, version_name, package), parameters)
    replaced = f", replaced {len(result.replaced)} older" if result.replaced else ""
    click.echo(f"scheduled {name} ({result.recurring_run_id}) cron '{result.cron}'{replaced}")
