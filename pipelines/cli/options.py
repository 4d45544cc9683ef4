"""Command-line options several `ctp` commands share: one definition each."""

import functools

import click

from components._shared.errors import ConfigError
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


def model_option(envvar: str | None = None, *, from_dataset: bool = False):
    """--model. With ``from_dataset`` (commands that also take --dataset) it defaults to the
    dataset's name; wrap the command in `model_defaults_to_dataset` to fill it in."""
    if from_dataset:
        return click.option(
            "--model",
            "model_name",
            envvar=envvar,
            default=None,
            help="Registered model name [default: the --dataset name]" + (f" [env {envvar}]" if envvar else ""),
        )
    return click.option(
        "--model",
        "model_name",
        envvar=envvar,
        default=IngestConfig.model_name,
        show_default=True,
        help="Registered model name" + (f" [env {envvar}]" if envvar else ""),
    )


def resolve_model_name(model_name: str | None, dataset: str) -> str:
    """The model a command registers or reads: --model (or its env var) when given, else the dataset's name."""
    return model_name or dataset


def model_defaults_to_dataset(func):
    """Fill in ``model_name`` from ``dataset`` when --model (and its env var) was not given."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        kwargs["model_name"] = resolve_model_name(kwargs.get("model_name"), kwargs["dataset"])
        return func(*args, **kwargs)

    return wrapper


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


def cluster_options(func):
    """Where the steps run on a cluster (`ctp compile`, and `ctp upload` when it compiles): GPU
    pool, nodes, Secret, images. Unset options keep ClusterSettings' defaults (shown in --help);
    `cluster_settings` builds the settings and says whether any option was given."""
    from components._shared.cluster import ClusterSettings as C

    options = [
        click.option("--gpus", type=int, default=None, help=f"GPUs per training pod, 0 = CPU [{C.gpus}]."),
        click.option(
            "--nodes",
            type=int,
            default=None,
            help=f"Training nodes; > 1 trains on a Kubeflow Trainer TrainJob, the train task only launches it "
            f"(no GPU) [{C.nodes}].",
        ),
        click.option("--accelerator-type", default=None, help=f"[{C.accelerator_type}]"),
        click.option(
            "--node-selector",
            default=None,
            help=f"KEY=VALUE label of the GPU node pool [{C.node_selector_key}={C.node_selector_value}].",
        ),
        click.option("--toleration-key", default=None, help=f"Taint the GPU pool carries [{C.toleration_key}]."),
        click.option(
            "--minio-secret", default=None, help=f"Secret with MINIO_ACCESS_KEY / MINIO_SECRET_KEY [{C.minio_secret}]."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return image_options(func)


def cluster_settings(gpus, nodes, accelerator_type, node_selector, toleration_key, minio_secret, **images):
    """(ClusterSettings from the cluster options, whether any was given)."""
    from components._shared.cluster import ClusterSettings

    chosen = {
        k: v
        for k, v in dict(
            gpus=gpus,
            nodes=nodes,
            accelerator_type=accelerator_type,
            toleration_key=toleration_key,
            minio_secret=minio_secret,
        ).items()
        if v is not None
    }
    if node_selector is not None:
        key, sep, value = node_selector.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--node-selector {node_selector!r} is not KEY=VALUE", hint="e.g. ctp.dev/node-pool=gpu")
        chosen.update(node_selector_key=key, node_selector_value=value)
    chosen.update(image_settings(**images))
    return ClusterSettings(**chosen), bool(chosen)


def deploy_target_option(func):
    """Where runs this command starts canary-deploy (the CronJobs set it from the ConfigMap);
    unset: the pipeline's own default."""
    from components.deploy_canary.config import DEPLOY_TARGETS

    return click.option(
        "--deploy-target",
        type=click.Choice(DEPLOY_TARGETS),
        envvar="CTP_DEPLOY_TARGET",
        default=None,
        help="Canary target of the runs started: local (replayed traffic) or kserve "
        "[env CTP_DEPLOY_TARGET; default: the pipeline's].",
    )(func)


def target_params(deploy_target: str | None) -> dict:
    return {"deploy_target": deploy_target} if deploy_target else {}
