"""`ctp monitor`: the drift monitor (pipelines/monitor.py) from the command line and the CronJob."""

import click

from components._shared.errors import ConfigError
from components._shared.store import DEFAULT_STORE
from components.train.config import TrainConfig
from pipelines.cli.kfp import cluster_store, connect, data_options, kfp_options, pipeline_ref
from pipelines.local_run import LOCAL_NPROC_PER_NODE, LOCAL_PIPELINE_ROOT
from pipelines.metrics import JOB_MONITOR, failure_metrics, monitor_metrics, pushgateway_option
from pipelines.monitor import MonitorConfig


@click.command("monitor")
@kfp_options
@data_options(DEFAULT_STORE)
@click.option("--submit", "to_kfp", is_flag=True, help="Submit a drift-triggered run to KFP (the CronJob).")
@click.option("--local", "to_local", is_flag=True, help="Run the pipeline here instead (kfp.local).")
@click.option("--version", "version_name", default="", help="With --submit: pipeline version. Default: newest.")
@click.option(
    "--window-rows",
    default=MonitorConfig.window_rows,
    show_default=True,
    help="Newest traffic examples compared with the champion's reference.",
)
@click.option(
    "--cooldown-minutes",
    default=MonitorConfig.cooldown_minutes,
    show_default=True,
    help="No new run until this long after the last one started.",
)
@click.option("--p-val", default=MonitorConfig.p_val, show_default=True, help="Drift test significance.")
@click.option("--epochs", default=TrainConfig.epochs, show_default=True, help="With --local.")
@click.option(
    "--nproc-per-node", default=LOCAL_NPROC_PER_NODE, show_default=True, help="With --local: torchrun processes."
)
@click.option("--pipeline-root", default=LOCAL_PIPELINE_ROOT, show_default=True, help="With --local.")
@pushgateway_option
def monitor_command(
    kfp,
    store_uri,
    dataset,
    model_name,
    to_kfp,
    to_local,
    version_name,
    window_rows,
    cooldown_minutes,
    p_val,
    epochs,
    nproc_per_node,
    pipeline_root,
    pushgateway,
):
    """Compare recent traffic with the champion's reference; on drift, start one run per evidence.

    Without --submit or --local it only writes the drift report."""
    from components._shared.store import open_store
    from pipelines.local_run import LocalRunOptions
    from pipelines.monitor import KfpTarget, LocalTarget, monitor

    if to_kfp and to_local:
        raise ConfigError("--submit and --local both given", hint="pass one: --submit (KFP) or --local (here)")
    config = MonitorConfig(
        dataset=dataset, model_name=model_name, window_rows=window_rows, cooldown_minutes=cooldown_minutes, p_val=p_val
    )
    store = open_store(cluster_store(store_uri) if to_kfp else store_uri)
    target = None
    if to_kfp:
        client = connect(kfp)
        target = KfpTarget(client, pipeline_ref(client, version_name, None), store, config)
    elif to_local:
        target = LocalTarget(
            LocalRunOptions(
                store_uri=store.uri,
                dataset=dataset,
                model_name=model_name,
                pipeline_root=pipeline_root,
                params={"epochs": epochs, "nproc_per_node": nproc_per_node},
            )
        )
    try:
        outcome = monitor(store, config, target)
    except BaseException as err:
        failure_metrics(JOB_MONITOR, model_name, getattr(err, "code", "UNEXPECTED")).push(pushgateway)
        raise
    monitor_metrics(model_name, outcome).push(pushgateway)
    if to_local and outcome.action == "submitted":
        click.echo(target.summary)
    click.echo(outcome.one_line())
