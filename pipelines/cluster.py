"""How the pipeline's tasks land on a cluster: store credentials on every task, the GPU pool for
training. The settings themselves are ``components._shared.cluster.ClusterSettings``."""

from __future__ import annotations

from components._shared.cluster import ClusterSettings


def use_store_credentials(task, settings: ClusterSettings) -> None:
    """MinIO endpoint from the settings ConfigMap, credentials from a Secret: never literals.
    The label lets the namespace's NetworkPolicy give the pod its egress (manifests/base)."""
    from kfp import kubernetes

    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "ctp")
    kubernetes.use_secret_as_env(
        task,
        secret_name=settings.minio_secret,
        secret_key_to_env={"MINIO_ACCESS_KEY": "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY": "MINIO_SECRET_KEY"},
    )
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=settings.settings_config_map,
        config_map_key_to_env={"MINIO_ENDPOINT": "MINIO_ENDPOINT", "MINIO_SECURE": "MINIO_SECURE"},
    )


def place_on_gpu_pool(task, settings: ClusterSettings) -> None:
    from kfp import kubernetes

    kubernetes.add_pod_label(task, "app.kubernetes.io/component", "training")
    task.set_cpu_limit(settings.train_cpu).set_memory_limit(settings.train_memory)
    if settings.gpus == 0:
        return
    task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.gpus)
    kubernetes.add_node_selector(task, label_key=settings.node_selector_key, label_value=settings.node_selector_value)
    kubernetes.add_toleration(task, key=settings.toleration_key, operator="Exists", effect=settings.toleration_effect)
