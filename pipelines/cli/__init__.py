"""`ctp`: seed data, run the pipeline locally, compile it for Kubeflow, start runs on a KFP host,
monitor drift, inspect the registry, backtest policies, maintain the store."""

import sys

import click

from components._shared.errors import CtpError
from pipelines.cli.data import data
from pipelines.cli.kfp import schedule_command, submit_command, upload_command
from pipelines.cli.local import compile_command, run_command
from pipelines.cli.log import log
from pipelines.cli.models import models
from pipelines.cli.monitor import monitor_command
from pipelines.cli.simulate import simulate
from pipelines.cli.store import store


class CtpGroup(click.Group):
    """Turns user-facing errors into one line on stderr and exit code 2, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CtpError as err:
            click.echo(f"ctp: error: {err.one_line()}", err=True)
            sys.exit(2)


@click.group(cls=CtpGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Continuous training on Kubeflow Pipelines.

    \b
    Quick start (no cluster needed):
      ctp data seed        # sample digits batches into ./.ctp-store
      ctp run              # ingest -> validate -> train (DDP) -> evaluate -> canary deploy
      ctp models list      # versions, aliases, metrics
      ctp compile          # KFP pipeline YAML for the cluster, in dist/
    """


for command in (
    data,
    run_command,
    compile_command,
    upload_command,
    submit_command,
    schedule_command,
    monitor_command,
    log,
    models,
    simulate,
    store,
):
    main.add_command(command)
