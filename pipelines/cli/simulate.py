"""`ctp simulate`: the click command over pipelines.simulate (which holds all the logic)."""

from __future__ import annotations

import click

from components.deploy_canary.config import DeployConfig
from components.evaluate.config import EvaluateConfig
from pipelines.cli.options import store_option
from pipelines.simulate import DEFAULT_POLICIES, QUICK_POLICIES, SCENARIOS, SimulateConfig

DEFAULTS = SimulateConfig()


@click.command("simulate")
@store_option("Store for the result (runs/simulate-<ts>/) and, with --dataset, the stream to replay.")
@click.option("--dataset", default="", help="Replay datasets/<name>/ from the store (default: seed --scenario).")
@click.option(
    "--scenario",
    type=click.Choice(list(SCENARIOS)),
    default=DEFAULTS.scenario,
    show_default=True,
    help="Seeded stream: default = 16 steps, gradual rotation from 4, class-prior shift at 9, noise "
    "at 12-13; quick = 8 steps, a sudden rotation at 4.",
)
@click.option("--quick", is_flag=True, help="Small and fast: --scenario quick and 3 policies (never, drift, always).")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    help="TRIGGER[/warm|scratch[/REPLAY]], TRIGGER = never|always|drift|every<N>, REPLAY = a share 0..1 "
    "of older rows or auto (the pipeline's default: replay_ratio x the new rows); repeatable. "
    f"Default: {' '.join(DEFAULT_POLICIES)}",
)
@click.option(
    "--bootstrap-steps", default=DEFAULTS.bootstrap_steps, show_default=True, help="Batches the first model trains on."
)
@click.option("--epochs", default=DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True)
@click.option("--lr", default=DEFAULTS.lr, show_default=True)
@click.option(
    "--drift-p-val", default=DEFAULTS.drift_p_val, show_default=True, help="KS test level (Bonferroni over features)."
)
@click.option(
    "--drift-cooldown",
    default=DEFAULTS.drift_cooldown,
    show_default=True,
    help="Steps without a drift-triggered retrain after one (the monitor's cooldown).",
)
@click.option(
    "--margin",
    default=EvaluateConfig.margin,
    show_default=True,
    help="Gate: non-inferiority margin vs the serving model.",
)
@click.option(
    "--min-agreement",
    default=DeployConfig.min_agreement,
    show_default=True,
    help="Canary: share of traffic where challenger and serving model must agree.",
)
@click.option("--seed", default=DEFAULTS.seed, show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def simulate(
    store_uri,
    dataset,
    scenario,
    quick,
    policies,
    bootstrap_steps,
    epochs,
    batch_size,
    lr,
    drift_p_val,
    drift_cooldown,
    margin,
    min_agreement,
    seed,
    no_progress,
):
    """Backtest retraining policies on one stream: accuracy, retrains, compute, recovery."""
    from components._shared.store import open_store
    from pipelines.simulate import markdown_table
    from pipelines.simulate import simulate as run_simulation

    if quick:
        scenario = "quick"
        policies = policies or QUICK_POLICIES
    config = SimulateConfig(
        store_uri=store_uri,
        dataset=dataset,
        scenario=scenario,
        policies=tuple(policies) or DEFAULT_POLICIES,
        bootstrap_steps=bootstrap_steps,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        drift_p_val=drift_p_val,
        drift_cooldown=drift_cooldown,
        seed=seed,
        evaluate=EvaluateConfig(margin=margin),
        deploy=DeployConfig(min_agreement=min_agreement),
    )
    result = run_simulation(config, progress=not no_progress)
    prefix = f"runs/{result['run_id']}/"
    click.echo(markdown_table(result))
    click.echo(
        f"{result['wall_seconds']:.0f} s; plot.png, table.md, table.csv, result.json in "
        f"{open_store(store_uri).describe(prefix)}"
    )
