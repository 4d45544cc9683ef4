"""`ctp`: seed data, run the pipeline locally, compile it for Kubeflow, inspect the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from components._shared.errors import CtpError
from pipelines.options import store_option



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


# --- data ---------------------------------------------------------------------------------------
@main.group()
def data():
    """Sample data for demos and tests."""


@data.command("seed")
@store_option()
@click.option("--dataset", default="digits", show_default=True)
@click.option("--batches", default=4, show_default=True, help="Labelled batches (and as many traffic batches).")
@click.option("--shift", type=click.Choice(["none", "rotation", "noise", "prior"]), default="none", show_default=True,
              help="Distribution shift applied from --shift-from on, to show drift.")
@click.option("--shift-from", default=0, show_default=True, help="First shifted batch (0-based, within this call).")
@click.option("--strength", default=1.0, show_default=True, help="1.0 = 30 degrees / noise std 40 / 90%% of 0-4 dropped.")
@click.option("--seed", default=0, show_default=True)
@click.option("--append", is_flag=True, help="Add batches after the existing ones (new data arriving).")
@click.option("--if-empty", is_flag=True, help="Do nothing if the dataset already has batches.")
def seed_command(store_uri, dataset, batches, shift, shift_from, strength, seed, append, if_empty):
    """Write scikit-learn's digits as labelled batches and unlabelled traffic."""
    from components._shared.dataset import list_batches
    from components._shared.sampledata import SeedConfig, seed_digits
    from components._shared.store import open_store

    store = open_store(store_uri)
    if if_empty and list_batches(store, dataset):
        click.echo(f"{store.describe('datasets/' + dataset)} already has data; not seeding")
        return
    written = seed_digits(store, SeedConfig(dataset=dataset, batches=batches, shift=shift, shift_from=shift_from,
                                            strength=strength, seed=seed, append=append))
    click.echo(f"wrote {len(written['datasets'])} labelled and {len(written['traffic'])} traffic batches "
               f"to {store.describe()}")


# --- run ----------------------------------------------------------------------------------------
@main.command("run")
@store_option()
@click.option("--dataset", default="digits", show_default=True)
@click.option("--model", "model_name", default="digits", show_default=True)
@click.option("--nproc-per-node", default=2, show_default=True, help="torchrun processes (gloo on CPU).")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=64, show_default=True, help="Global batch size.")
@click.option("--lr", default=0.002, show_default=True)
@click.option("--init", type=click.Choice(["auto", "warm", "scratch"]), default="auto", show_default=True,
              help="auto: warm-start from the champion when compatible.")
@click.option("--trigger", default="manual", show_default=True, help="Recorded in the model card.")
@click.option("--min-accuracy", default=0.8, show_default=True, help="Gate for the first model.")
@click.option("--margin", default=0.01, show_default=True, help="Non-inferiority margin vs the champion.")
@click.option("--allow-new-classes", is_flag=True, help="Accept labels the champion has never seen.")
@click.option("--pipeline-root", default="./.ctp-runs", show_default=True, help="Local KFP artifacts.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Any other pipeline parameter, e.g. --param max_forgetting=0.05 --param patience=3 (repeatable).")
def run_command(store_uri, dataset, model_name, nproc_per_node, epochs, batch_size, lr, init, trigger,
                min_accuracy, margin, allow_new_classes, pipeline_root, params):
    """Run the whole pipeline locally through kfp.local against the store."""
    from pipelines.local_run import LocalRunOptions, run_locally
    from pipelines.triggers import parse_params

    summary = run_locally(LocalRunOptions(
        store_uri=store_uri, dataset=dataset, model_name=model_name, nproc_per_node=nproc_per_node,
        epochs=epochs, batch_size=batch_size, lr=lr, init=init, trigger=trigger, min_accuracy=min_accuracy,
        margin=margin, allow_new_classes=allow_new_classes, pipeline_root=pipeline_root,
        extra_params=parse_params(params)))
    click.echo(summary)


# --- compile ------------------------------------------------------------------------------------
@main.command("compile")
@click.option("-o", "--output", default="dist/continuous_training.yaml", show_default=True)
@click.option("--gpus", default=1, show_default=True, help="GPUs for the train step (0 = CPU).")
@click.option("--accelerator-type", default="nvidia.com/gpu", show_default=True)
@click.option("--node-selector", default="ctp.dev/node-pool=gpu", show_default=True,
              help="KEY=VALUE label of the GPU node pool.")
@click.option("--toleration-key", default="nvidia.com/gpu", show_default=True, help="Taint the GPU pool carries.")
@click.option("--minio-secret", default="ctp-minio", show_default=True,
              help="Secret with MINIO_ACCESS_KEY / MINIO_SECRET_KEY.")
def compile_command(output, gpus, accelerator_type, node_selector, toleration_key, minio_secret):
    """Compile the pipeline to KFP IR YAML (for the dashboard, `ctp upload` or CI)."""
    from pipelines.continuous_training import compile_pipeline
    from pipelines.gpu import ClusterSettings

    key, sep, value = node_selector.partition("=")
    if not sep or not key or not value:
        raise CtpError(f"--node-selector {node_selector!r} is not KEY=VALUE", code="CONFIG_INVALID")
    settings = ClusterSettings(accelerator_type=accelerator_type, gpus=gpus, node_selector_key=key,
                               node_selector_value=value, toleration_key=toleration_key, minio_secret=minio_secret)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    compile_pipeline(output, settings)
    click.echo(f"compiled {output}")


# --- on a KFP host: upload, submit, schedule, and the drift monitor (pipelines/triggers_cli.py) ---
from pipelines import triggers_cli  # noqa: E402  (after main: these commands join its group)

main.add_command(triggers_cli.upload_command)
main.add_command(triggers_cli.submit_command)
main.add_command(triggers_cli.schedule_command)
main.add_command(triggers_cli.monitor_command)
from pipelines.models_cli import models  # noqa: E402
from pipelines.simulate_cli import simulate  # noqa: E402
from pipelines.store_cli import store  # noqa: E402

main.add_command(models)
main.add_command(simulate)
main.add_command(store)

if __name__ == "__main__":
    main()
