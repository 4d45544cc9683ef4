"""`ctp run` (the pipeline here, through kfp.local) and `ctp compile` (the KFP YAML for a cluster)."""

from pathlib import Path

import click

from components.evaluate.config import EvaluateConfig
from components.ingest.config import LEASE_POLICIES, IngestConfig
from components.train.config import INIT_POLICIES, TrainConfig
from pipelines.cli.options import (
    cluster_options,
    cluster_settings,
    dataset_option,
    model_defaults_to_dataset,
    model_option,
    store_option,
)
from pipelines.local_run import LOCAL_NPROC_PER_NODE, LOCAL_PIPELINE_ROOT
from pipelines.run_params import DEFAULT_TRIGGER


@click.command("run")
@store_option()
@dataset_option()
@model_option(from_dataset=True)
@click.option(
    "--nproc-per-node", default=LOCAL_NPROC_PER_NODE, show_default=True, help="torchrun processes (gloo on CPU)."
)
@click.option("--epochs", default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, help="Global batch size.")
@click.option("--lr", default=TrainConfig.lr, show_default=True)
@click.option(
    "--init",
    type=click.Choice(INIT_POLICIES),
    default=TrainConfig.init,
    show_default=True,
    help="auto: warm-start from the champion when compatible.",
)
@click.option(
    "--flip/--no-flip",
    default=TrainConfig.flip,
    show_default=True,
    help="Augment: mirror training images left-right at random (photos; not digits or text).",
)
@click.option(
    "--crop-pad",
    default=TrainConfig.crop_pad,
    show_default=True,
    help="Augment: random crop of each training image zero-padded by this many pixels (about 1/8 of the side).",
)
@click.option(
    "--replay-ratio",
    default=IngestConfig.replay_ratio,
    show_default=True,
    help="Warm start: old training rows replayed per new row (the same share of every class, at least "
    "a minimum per class, at most all). --param replay_fraction=F replays a fixed share instead.",
)
@click.option("--trigger", default=DEFAULT_TRIGGER, show_default=True, help="Recorded in the model card.")
@click.option(
    "--min-accuracy", default=EvaluateConfig.min_accuracy, show_default=True, help="Gate for the first model."
)
@click.option(
    "--margin", default=EvaluateConfig.margin, show_default=True, help="Non-inferiority margin vs the champion."
)
@click.option("--allow-new-classes", is_flag=True, help="Accept labels the champion has never seen.")
@click.option("--force", is_flag=True, help="Train even when no batch is newer than the champion's (else: skip).")
@click.option(
    "--lease-policy",
    type=click.Choice(LEASE_POLICIES),
    default=IngestConfig.lease_policy,
    show_default=True,
    help="Another run of this model is active: end at once (skip) or wait for it.",
)
@click.option("--pipeline-root", default=LOCAL_PIPELINE_ROOT, show_default=True, help="Local KFP artifacts.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other pipeline parameter, e.g. --param max_forgetting=0.05 --param patience=3 (repeatable).",
)
@model_defaults_to_dataset
def run_command(
    store_uri,
    dataset,
    model_name,
    nproc_per_node,
    epochs,
    batch_size,
    lr,
    init,
    flip,
    crop_pad,
    replay_ratio,
    trigger,
    min_accuracy,
    margin,
    allow_new_classes,
    force,
    lease_policy,
    pipeline_root,
    params,
):
    """Run the whole pipeline locally through kfp.local against the store."""
    from pipelines.local_run import LocalRunOptions, run_locally
    from pipelines.run_params import parse_params

    chosen = dict(
        nproc_per_node=nproc_per_node,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        init=init,
        flip=flip,
        crop_pad=crop_pad,
        replay_ratio=replay_ratio,
        min_accuracy=min_accuracy,
        margin=margin,
        allow_new_classes=allow_new_classes,
        force=force,
        lease_policy=lease_policy,
    )
    summary = run_locally(
        LocalRunOptions(
            store_uri=store_uri,
            dataset=dataset,
            model_name=model_name,
            trigger=trigger,
            pipeline_root=pipeline_root,
            params={**chosen, **parse_params(params)},
        )
    )
    click.echo(summary)


@click.command("compile")
@click.option("-o", "--output", default="dist/continuous_training.yaml", show_default=True)
@cluster_options
def compile_command(output, **options):
    """Compile the pipeline to KFP IR YAML (for the dashboard, `ctp upload` or CI)."""
    from pipelines.continuous_training import compile_pipeline

    settings, _ = cluster_settings(**options)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    compile_pipeline(output, settings)
    click.echo(f"compiled {output}")
