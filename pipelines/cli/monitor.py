"""`ctp monitor`: the monitor (pipelines/monitor.py) from the command line and the CronJob."""

import click

from components._shared.errors import ConfigError
from components._shared.store import DEFAULT_STORE
from components.train.config import TrainConfig
from pipelines.cli.kfp import cluster_store, connect, data_options, kfp_options, pipeline_ref
from pipelines.cli.options import deploy_target_option, target_params
from pipelines.local_run import LOCAL_NPROC_PER_NODE, LOCAL_PIPELINE_ROOT
from pipelines.metrics import JOB_MONITOR, failure_metrics, monitor_metrics, pushgateway_option
from pipelines.monitor import MonitorConfig


@click.command("monitor")
@kfp_options
@data_options(DEFAULT_STORE)
@click.option("--submit", "to_kfp", is_flag=True, help="Submit a triggered run to KFP (the CronJob).")
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
@click.option(
    "--min-accuracy",
    envvar="CTP_MIN_ACCURACY",
    default=MonitorConfig.min_accuracy,
    show_default=True,
    help="Performance trigger: fire when the champion's accuracy on labelled rows newer than its "
    "training data is below this (0: off) [env CTP_MIN_ACCURACY].",
)
@click.option(
    "--max-drop",
    envvar="CTP_MAX_DROP",
    default=MonitorConfig.max_drop,
    show_default=True,
    help="Performance trigger: fire when that accuracy is more than this below the champion's test "
    "accuracy (0: off) [env CTP_MAX_DROP].",
)
@click.option(
    "--label-rows",
    envvar="CTP_LABEL_ROWS",
    default=MonitorConfig.label_rows,
    show_default=True,
    help="Performance trigger: score at most this many of the newest new labelled rows [env CTP_LABEL_ROWS].",
)
@click.option(
    "--min-scored-rows",
    envvar="CTP_MIN_SCORED_ROWS",
    default=MonitorConfig.min_scored_rows,
    show_default=True,
    help="Performance trigger: no decision on fewer new labelled rows [env CTP_MIN_SCORED_ROWS].",
)
@click.option(
    "--min-new-rows",
    envvar="CTP_MIN_NEW_ROWS",
    default=MonitorConfig.min_new_rows,
    show_default=True,
    help="New-labels trigger: fire at this many labelled rows newer than the champion's training data "
    "(0: off) [env CTP_MIN_NEW_ROWS].",
)
@click.option("--epochs", default=TrainConfig.epochs, show_default=True, help="With --local.")
@click.option(
    "--nproc-per-node", default=LOCAL_NPROC_PER_NODE, show_default=True, help="With --local: torchrun processes."
)
@click.option("--pipeline-root", default=LOCAL_PIPELINE_ROOT, show_default=True, help="With --local.")
@pushgateway_option
@deploy_target_option
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
    min_accuracy,
    max_drop,
    label_rows,
    min_scored_rows,
    min_new_rows,
    epochs,
    nproc_per_node,
    pipeline_root,
    pushgateway,
    deploy_target,
):
    """Check the retraining triggers against the champion (drift of recent traffic; with
    --min-accuracy/--max-drop its accuracy on new labels; with --min-new-rows the amount of new
    labels); when one fires, start one run per evidence.

    Without --submit or --local it only writes the report."""
    from components._shared.store import open_store
    from pipelines.local_run import LocalRunOptions
    from pipelines.monitor import KfpTarget, LocalTarget, monitor

    if to_kfp and to_local:
        raise ConfigError("--submit and --local both given", hint="pass one: --submit (KFP) or --local (here)")
    config = MonitorConfig(
        dataset=dataset,
        model_name=model_name,
        window_rows=window_rows,
        cooldown_minutes=cooldown_minutes,
        p_val=p_val,
        min_accuracy=min_accuracy,
        max_drop=max_drop,
        label_rows=label_rows,
        min_scored_rows=min_scored_rows,
        min_new_rows=min_new_rows,
    )
    store = open_store(cluster_store(store_uri) if to_kfp else store_uri)
    target = None
    if to_kfp:
        client = connect(kfp)
        target = KfpTarget(
            client, pipeline_ref(client, version_name, None), store, config, params=target_params(deploy_target)
        )
    elif to_local:
        target = LocalTarget(
            LocalRunOptions(
                store_uri=store.uri,
                dataset=dataset,
                model_name=model_name,
                pipeline_root=pipeline_root,
                params={"epochs": epochs, "nproc_per_node": nproc_per_node, **target_params(deploy_target)},
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
