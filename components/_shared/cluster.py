"""Where the steps run on a cluster: GPU node pool, accelerator, resources, store credentials.

Compile-time settings (KFP cannot take accelerators or node selectors as run parameters):
`ctp compile` exposes each as a flag, the pipeline applies them to its tasks, and the train step
receives the same object (as a dict across the KFP boundary) for the nodes of a multi-node
TrainJob. `kfp.local` ignores them; the compiled YAML keeps them.
"""

from __future__ import annotations

import dataclasses

from components._shared.errors import ConfigError
from components._shared.images import BASE_IMAGE, TRAINER_IMAGE

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# The images' non-root user and group (images/*/Dockerfile `USER 10001:10001`): every pod ctp
# starts (KFP tasks, TrainJob nodes, the predictor) runs as this uid/gid.
RUN_AS_UID = 10001
RUN_AS_GID = 10001
# Set on every pod that asked for GPUs (the train step's pod, each TrainJob node): the train step
# fails with CUDA_UNAVAILABLE instead of training on CPU while it holds them.
GPUS_REQUESTED_ENV = "CTP_GPUS_REQUESTED"


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    accelerator_type: str = "nvidia.com/gpu"
    gpus: int = 1  # per training pod (per node of a TrainJob); 0 = CPU
    nodes: int = 1  # training nodes: > 1 trains on a Kubeflow Trainer TrainJob, launched by a small pod
    train_cpu: str = "8"
    train_memory: str = "32G"
    # /dev/shm of the single-pod train task, memory-backed (counts against train_memory): DataLoader
    # workers hand batches over in shared memory and NCCL uses it; a container's default is 64 MB.
    train_shm: str = "8Gi"
    launcher_cpu: str = "500m"  # the train task when nodes > 1: it only submits and watches the TrainJob
    launcher_memory: str = "1Gi"
    step_cpu: str = "2"
    step_memory: str = "4G"
    node_selector_key: str = "ctp.dev/node-pool"
    node_selector_value: str = "gpu"
    toleration_key: str = "nvidia.com/gpu"
    toleration_effect: str = "NoSchedule"
    minio_secret: str = "ctp-s3-steps"  # manifests: keys MINIO_ACCESS_KEY, MINIO_SECRET_KEY (never in the YAML)
    settings_config_map: str = "ctp-settings"  # keys MINIO_ENDPOINT, MINIO_SECURE
    # Full image references (registry/name:tag or @sha256:digest): the base image runs every step
    # but train; the trainer image runs the train step and every node of its TrainJob.
    base_image: str = BASE_IMAGE
    trainer_image: str = TRAINER_IMAGE

    def __post_init__(self):
        if self.gpus < 0:
            raise ConfigError(f"gpus={self.gpus}; must be 0 (CPU) or more")
        if self.nodes < 1:
            raise ConfigError(f"nodes={self.nodes}; must be 1 (one training pod) or more (a TrainJob)")
        for field in ("base_image", "trainer_image"):
            ref = getattr(self, field)
            if not ref or any(c.isspace() for c in ref) or ref != ref.strip("/:@"):
                raise ConfigError(
                    f"{field} {ref!r} is not an image reference", hint="e.g. registry/name:tag or @sha256:..."
                )
        if self.toleration_effect not in TAINT_EFFECTS:
            raise ConfigError(
                f"toleration effect {self.toleration_effect!r} is not a Kubernetes taint effect",
                hint=f"use one of {', '.join(TAINT_EFFECTS)}",
            )

    @classmethod
    def image_names(cls, registry: str, tag: str) -> dict:
        """base_image and trainer_image: the default image names under another registry and tag."""
        base, trainer = (ref.rsplit("/", 1)[1].split(":", 1)[0] for ref in (BASE_IMAGE, TRAINER_IMAGE))
        registry = registry.rstrip("/")
        return {"base_image": f"{registry}/{base}:{tag}", "trainer_image": f"{registry}/{trainer}:{tag}"}

    def check_nodes(self, num_nodes: int) -> None:
        """The run's num_nodes must match how the train task was compiled: a single training pod
        holds the GPUs, a multi-node launcher holds none (and must not train itself)."""
        if (num_nodes > 1) != (self.nodes > 1):
            raise ConfigError(
                f"num_nodes={num_nodes} but the pipeline was compiled for {self.nodes} training node(s)",
                hint=f"recompile with `ctp compile --nodes {num_nodes}`, or run with num_nodes={self.nodes}",
            )

    def to_dict(self) -> dict:
        """The settings as a KFP parameter (JSON): the train step rebuilds them with from_dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ClusterSettings:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(
                f"unknown cluster setting(s) {', '.join(unknown)}",
                hint="recompile the pipeline with this version of ctp",
            )
        return cls(**values)
