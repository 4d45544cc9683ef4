"""`ctp data`: sample data for demos and tests."""

import click

from pipelines.cli.options import dataset_option, store_option


@click.group()
def data():
    """Sample data for demos and tests."""


@data.command("seed")
@store_option()
@dataset_option()
@click.option("--batches", default=4, show_default=True, help="Labelled batches (and as many traffic batches).")
@click.option(
    "--shift",
    type=click.Choice(["none", "rotation", "noise", "prior"]),
    default="none",
    show_default=True,
    help="Distribution shift applied from --shift-from on, to show drift.",
)
@click.option("--shift-from", default=0, show_default=True, help="First shifted batch (0-based, within this call).")
@click.option(
    "--strength", default=1.0, show_default=True, help="1.0 = 30 degrees / noise std 40 / 90%% of 0-4 dropped."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--append", is_flag=True, help="Add batches after the existing ones (new data arriving).")
@click.option("--if-empty", is_flag=True, help="Do nothing if the dataset already has batches.")
def seed_command(store_uri, dataset, batches, shift, shift_from, strength, seed, append, if_empty):
    """Write scikit-learn's digits as labelled batches and unlabelled traffic."""
    from components._shared.dataset import list_batches
    from components._shared.sampledata import SeedConfig, seed_digits
    from components._shared.store import open_store

    store = open_store(store_uri, create_bucket=True)  # the admin's command: the steps' keys cannot create it
    if if_empty and list_batches(store, dataset):
        click.echo(f"{store.describe('datasets/' + dataset)} already has data; not seeding")
        return
    written = seed_digits(
        store,
        SeedConfig(
            dataset=dataset,
            batches=batches,
            shift=shift,
            shift_from=shift_from,
            strength=strength,
            seed=seed,
            append=append,
        ),
    )
    click.echo(
        f"wrote {len(written['datasets'])} labelled and {len(written['traffic'])} traffic batches to {store.describe()}"
    )
