"""Command-line options several `ctp` commands share: one definition each (no import of cli.py,
so every command module can use them without a cycle)."""

import click

from components._shared.store import DEFAULT_STORE

STORE_HELP = "A directory or s3://bucket/prefix (MINIO_* env for S3) [env CTP_STORE]"


def store_option(help: str = STORE_HELP, default: str = DEFAULT_STORE):
    return click.option("--store", "store_uri", envvar="CTP_STORE", default=default, show_default=True, help=help)
