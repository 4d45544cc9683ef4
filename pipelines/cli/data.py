"""`ctp data`: sample data for demos and tests, and importing your own images."""

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


@data.command("import")
@click.argument("src")
@click.option("--dataset", required=True, help="Dataset under datasets/<name>/ to add the batch to.")
@store_option()
@click.option(
    "--resize",
    default="none",
    show_default=True,
    help="none: every image must have one size (mixed sizes are an error); WxH: resize all to W x H.",
)
@click.option(
    "--rows-per-part",
    type=int,
    default=None,
    help="Rows per Parquet part file of the batch [default: ImportConfig.rows_per_part, 50,000].",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def import_command(src, dataset, store_uri, resize, rows_per_part, progress):
    """Import SRC as one new labelled batch: a folder or s3://bucket/prefix with one folder per
    class (torchvision ImageFolder), or a CSV/Parquet manifest of path,label[,id].

    Ids are content hashes (or the manifest's); files imported before are skipped, so a rerun
    writes nothing. Every problem is listed in one report and then nothing is written."""
    from components._shared.importer import ImportConfig, import_images, parse_resize
    from components._shared.store import open_store

    sizing = {"rows_per_part": rows_per_part} if rows_per_part else {}
    config = ImportConfig(dataset=dataset, resize=parse_resize(resize), progress=progress, **sizing)
    result = import_images(open_store(store_uri, create_bucket=True), src, config)
    click.echo(result.summary())
