"""How the pipeline's tasks land on a cluster: store credentials on every task, the GPU pool for
training. The settings themselves are ``components._shared.cluster.ClusterSettings``."""

from __future__ import annotations

from components._shared.cluster import GPUS_REQUESTED_ENV, RUN_AS_GID, RUN_AS_UID, ClusterSettings

POD_LABELS = {"app.kubernetes.io/part-of": "ctp"}
SHM_VOLUME = "dshm"  # the train task's memory-backed /dev/shm (as in the TrainJob's TrainingRuntime)
# No Istio sidecar on step pods: an injected proxy runs as root with NET_ADMIN (fails Pod Security
# "restricted") and keeps a finished step's pod alive.
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}


def restrict_pod_security(task) -> None:
    """Pod Security "restricted" for a task, as far as a task can say it: kfp-kubernetes 2.17's
    set_security_context sets runAsNonRoot/runAsUser/runAsGroup only. KFP backends >= 2.16 add
    allowPrivilegeEscalation=false, capabilities drop ALL and seccomp RuntimeDefault to every
    executor pod (kubeflow/pipelines backend/src/v2/compiler/argocompiler/security_context.go,
    applySecurityContextToExecutorTemplate) but NOT runAsNonRoot, so this call is what makes the
    pod pass; backends before 2.16 set none of it and the namespace can only enforce baseline."""
    from kfp import kubernetes

    kubernetes.set_security_context(task, run_as_user=RUN_AS_UID, run_as_group=RUN_AS_GID, run_as_non_root=True)
    for key, value in POD_LABELS.items():
        kubernetes.add_pod_label(task, key, value)
    for key, value in POD_ANNOTATIONS.items():
        kubernetes.add_pod_annotation(task, key, value)


def use_store_credentials(task, settings: ClusterSettings) -> None:
    """MinIO endpoint from the settings ConfigMap, credentials from a Secret: never literals."""
    from kfp import kubernetes

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
    """The GPU pool for the train task, and CTP_GPUS_REQUESTED so that a pod without usable CUDA
    fails (CUDA_UNAVAILABLE) instead of training on CPU. kfp.local applies task env vars to its
    subprocesses, so `ctp run` builds the pipeline with gpus=0 (pipelines/local_run.py).

    With nodes > 1 the task is only the TrainJob's launcher: a small pod off the GPU pool, so a
    pool of exactly `nodes` GPU nodes is not short of one (the TrainJob's TrainingRuntime places
    the workers)."""
    from kfp import kubernetes

    if settings.nodes > 1:
        task.set_cpu_limit(settings.launcher_cpu).set_memory_limit(settings.launcher_memory)
        return
    kubernetes.add_pod_label(task, "app.kubernetes.io/component", "training")
    task.set_cpu_limit(settings.train_cpu).set_memory_limit(settings.train_memory)
    kubernetes.empty_dir_mount(task, SHM_VOLUME, "/dev/shm", medium="Memory", size_limit=settings.train_shm)
    if settings.gpus == 0:
        return
    task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.gpus)
    task.set_env_variable(GPUS_REQUESTED_ENV, str(settings.gpus))
    kubernetes.add_node_selector(task, label_key=settings.node_selector_key, label_value=settings.node_selector_value)
    kubernetes.add_toleration(task, key=settings.toleration_key, operator="Exists", effect=settings.toleration_effect)
