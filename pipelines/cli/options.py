"""Command-line options several `ctp` commands share: one definition each."""

import click

from components._shared.store import DEFAULT_STORE
from components.ingest.config import IngestConfig

STORE_HELP = "A directory or s3://bucket/prefix (MINIO_* env for S3) [env CTP_STORE]"


def store_option(help: str = STORE_HELP, default=DEFAULT_STORE):
    return click.option("--store", "store_uri", envvar="CTP_STORE", default=default, show_default=True, help=help)


def dataset_option(envvar: str | None = None):
    return click.option(
        "--dataset",
        envvar=envvar,
        default=IngestConfig.dataset,
        show_default=True,
        help="Dataset under datasets/<name>/" + (f" [env {envvar}]" if envvar else ""),
    )


def model_option(envvar: str | None = None):
    return click.option(
        "--model",
        "model_name",
        envvar=envvar,
        default=IngestConfig.model_name,
        show_default=True,
        help="Registered model name" + (f" [env {envvar}]" if envvar else ""),
    )


def json_option():
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
