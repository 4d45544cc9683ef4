"""`ctp log compact`: the raw inference log (KServe's payload logger) -> traffic and prediction
Parquet (pipelines/inference_log.py); the ctp-log-compact CronJob runs it."""

import click

from components._shared.store import DEFAULT_STORE
from pipelines.cli.kfp import data_options
from pipelines.inference_log import CompactConfig
from pipelines.metrics import JOB_COMPACT, compaction_metrics, failure_metrics, pushgateway_option


@click.group("log")
def log():
    """The inference log KServe writes to the store."""


@log.command("compact")
@data_options(DEFAULT_STORE)
@click.option("--log-prefix", default=CompactConfig.log_prefix, show_default=True, help="Where the logger writes.")
@click.option(
    "--chunk-objects",
    default=CompactConfig.chunk_objects,
    show_default=True,
    help="Raw objects per chunk (one traffic batch each); bounds memory.",
)
@click.option(
    "--min-age-seconds",
    default=CompactConfig.min_age_seconds,
    show_default=True,
    help="Leave younger objects for the next run (a response may still be on its way).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar. Default: when stderr is a terminal.")
@pushgateway_option
def compact_command(store_uri, dataset, model_name, log_prefix, chunk_objects, min_age_seconds, progress, pushgateway):
    """Pair logged requests and responses by id and write traffic/<dataset>/ and
    predictions/<model>/version=<v>/ Parquet; each raw object is compacted once, then deleted."""
    import sys

    from components._shared.errors import CtpError
    from components._shared.store import open_store
    from pipelines.inference_log import compact

    config = CompactConfig(
        dataset=dataset,
        model_name=model_name,
        log_prefix=log_prefix,
        chunk_objects=chunk_objects,
        min_age_seconds=min_age_seconds,
    )
    try:
        report = compact(open_store(store_uri), config, progress=sys.stderr.isatty() if progress is None else progress)
    except CtpError as err:
        failure_metrics(JOB_COMPACT, model_name, err.code or type(err).__name__).push(pushgateway)
        raise
    except BaseException:
        failure_metrics(JOB_COMPACT, model_name, "UNEXPECTED").push(pushgateway)
        raise
    compaction_metrics(model_name, report).push(pushgateway)
    for finding in report.findings.values():
        examples = f" (e.g. {', '.join(finding.examples[:3])})" if finding.examples else ""
        click.echo(f"ctp: {finding.severity}: {finding.code} x{finding.count}: {finding.message}{examples}", err=True)
    click.echo(report.one_line())
