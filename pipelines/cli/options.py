"""Command-line options several `ctp` commands share: one definition each."""

import click

from components._shared.store import DEFAULT_STORE
from components.ingest.config import IngestConfig

STORE_HELP = "A directory or s3://bucket/prefix (MINIO_* env for S3) [env CTP_STORE]"


def store_option(help: str = STORE_HELP, default=DEFAULT_STORE):
    return click.option("--store", "store_uri", envvar="CTP_STORE", default=default, show_default=True, help=help)


def dataset_option(envvar: str | None = None):
    return click.option(
        "--dataset",
        envvar=envvar,
        default=IngestConfig.dataset,
        show_default=True,
        help="Dataset under datasets/<name>/" + (f" [env {envvar}]" if envvar else ""),
    )


def model_option(envvar: str | None = None):
    return click.option(
        "--model",
        "model_name",
        envvar=envvar,
        default=IngestConfig.model_name,
        show_default=True,
        help="Registered model name" + (f" [env {envvar}]" if envvar else ""),
    )


def json_option():
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def image_options(func):
    """--base-image/--trainer-image (full references, digests allowed) or --image-registry and
    --image-tag applied to both default image names; `image_settings` turns them into the
    ClusterSettings fields."""
    from components._shared.cluster import ClusterSettings

    options = [
        click.option(
            "--base-image", default=None, help=f"Image of every step but train [{ClusterSettings.base_image}]."
        ),
        click.option(
            "--trainer-image", default=None, help=f"Image of train and its TrainJob [{ClusterSettings.trainer_image}]."
        ),
        click.option("--image-registry", default=None, help="Registry for both default image names."),
        click.option("--image-tag", default=None, help="Tag for both default image names."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def image_settings(base_image, trainer_image, image_registry, image_tag) -> dict:
    """The image fields of ClusterSettings from the image options; an explicit reference wins
    over the registry/tag naming."""
    from components._shared import images
    from components._shared.cluster import ClusterSettings

    named = {}
    if image_registry or image_tag:
        named = ClusterSettings.image_names(image_registry or images.REGISTRY, image_tag or images.TAG)
    explicit = {"base_image": base_image, "trainer_image": trainer_image}
    return {**named, **{k: v for k, v in explicit.items() if v}}
