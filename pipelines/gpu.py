"""Where the training step runs on a cluster: GPU node pool, accelerator, resources, secrets.

These are compile-time settings (KFP cannot take accelerators or node selectors as run
parameters); `ctp compile` exposes each as a flag. `kfp.local` ignores them, the YAML keeps them.
"""

from __future__ import annotations

import dataclasses

from components._shared.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    accelerator_type: str = "nvidia.com/gpu"
    gpus: int = 1
    train_cpu: str = "8"
    train_memory: str = "32G"
    step_cpu: str = "2"
    step_memory: str = "4G"
    node_selector_key: str = "ctp.dev/node-pool"
    node_selector_value: str = "gpu"
    toleration_key: str = "nvidia.com/gpu"
    toleration_effect: str = "NoSchedule"
    minio_secret: str = "ctp-minio"  # keys MINIO_ACCESS_KEY, MINIO_SECRET_KEY (never in the YAML)
    settings_config_map: str = "ctp-settings"  # keys MINIO_ENDPOINT, MINIO_SECURE

    def __post_init__(self):
        if self.gpus < 0:
            raise ConfigError(f"gpus={self.gpus}; must be 0 (CPU) or more")
        if self.toleration_effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ConfigError(f"toleration effect {self.toleration_effect!r} is not a Kubernetes taint effect")

    def trainjob(self) -> dict:
        """Per-node settings of a multi-node Kubeflow Trainer TrainJob (components/train/trainjob.py):
        the same accelerator, resources and store credentials as the single-pod train step."""
        return {"accelerator_type": self.accelerator_type, "gpus_per_node": self.gpus, "cpu": self.train_cpu,
                "memory": self.train_memory, "minio_secret": self.minio_secret,
                "settings_config_map": self.settings_config_map}


def use_store_credentials(task, settings: ClusterSettings) -> None:
    """MinIO endpoint from the settings ConfigMap, credentials from a Secret: never literals.
    The label lets the namespace's NetworkPolicy give the pod its egress (manifests/base)."""
    from kfp import kubernetes

    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "ctp")

    kubernetes.use_secret_as_env(task, secret_name=settings.minio_secret,
                                 secret_key_to_env={"MINIO_ACCESS_KEY": "MINIO_ACCESS_KEY",
                                                    "MINIO_SECRET_KEY": "MINIO_SECRET_KEY"})
    kubernetes.use_config_map_as_env(task, config_map_name=settings.settings_config_map,
                                     config_map_key_to_env={"MINIO_ENDPOINT": "MINIO_ENDPOINT",
                                                            "MINIO_SECURE": "MINIO_SECURE"})


def place_on_gpu_pool(task, settings: ClusterSettings) -> None:
    from kfp import kubernetes

    kubernetes.add_pod_label(task, "app.kubernetes.io/component", "training")
    task.set_cpu_limit(settings.train_cpu).set_memory_limit(settings.train_memory)
    if settings.gpus == 0:
        return
    task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.gpus)
    kubernetes.add_node_selector(task, label_key=settings.node_selector_key, label_value=settings.node_selector_value)
    kubernetes.add_toleration(task, key=settings.toleration_key, operator="Exists", effect=settings.toleration_effect)
