"""Multi-node training as a Kubeflow Trainer v2 ``TrainJob`` (torch-distributed runtime).

The object is built from the published Trainer API models (``kubeflow_trainer_api``), so a wrong
field or type fails here, not in the cluster. Each node runs the same entry point as a single
pod, under torchrun (which reads the ``PET_*`` rendezvous variables the Trainer sets), with the
config read from the store. ``run`` creates the job (or adopts it when a retried step finds it
already there), logs each status change, and raises on failure or timeout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

from components._shared.cluster import ClusterSettings
from components._shared.errors import CtpError
from components.train.torchrun import ENTRY_POINT, MAX_RESTARTS, RESTARTABLE_ENV

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(CtpError):
    code = "TRAINJOB_FAILED"


@dataclasses.dataclass(frozen=True)
class TrainJobSettings:
    """The job itself; per-node resources and credentials come from the pipeline's cluster settings."""

    cluster: ClusterSettings = ClusterSettings()
    namespace: str = ""  # empty: the namespace of the pod that submits the job
    runtime: str = "torch-distributed"  # a ClusterTrainingRuntime shipped with Kubeflow Trainer
    timeout_s: float = 6 * 3600
    poll_s: float = 15.0


def job_name(run_id: str) -> str:
    """A DNS-1123 name that is the same on every retry of the step (so a retry adopts the job)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:30].strip("-")
    return f"ctp-train-{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:6]}"


POD_LABELS = {"app.kubernetes.io/part-of": "ctp", "app.kubernetes.io/component": "training"}


def build(
    settings: TrainJobSettings,
    *,
    name: str,
    namespace: str,
    num_nodes: int,
    nproc_per_node: int,
    store_uri: str,
    config_key: str,
):
    """The TrainJob as the Trainer API model (validated on construction)."""
    from kubeflow_trainer_api import models as m

    if num_nodes < 1 or nproc_per_node < 1:
        raise TrainJobError(
            f"num_nodes={num_nodes}, nproc_per_node={nproc_per_node}; both must be >= 1", code="CONFIG_INVALID"
        )
    cluster = settings.cluster
    resources = {"cpu": cluster.train_cpu, "memory": cluster.train_memory}
    if cluster.gpus:
        resources[cluster.accelerator_type] = str(cluster.gpus)
    quantities = {k: m.IoK8sApimachineryPkgApiResourceQuantity(v) for k, v in resources.items()}
    return m.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name, namespace=namespace, labels=POD_LABELS),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(name=settings.runtime),
            runtime_patches=[_pod_label_patch(m)],
            trainer=m.TrainerV1alpha1Trainer(
                image=cluster.trainer_image,  # the same image as the train step's own pod
                num_nodes=num_nodes,
                num_proc_per_node=nproc_per_node,
                command=[
                    "python",
                    "-m",
                    "torch.distributed.run",
                    f"--max-restarts={MAX_RESTARTS}",
                    "-m",
                    ENTRY_POINT,
                    "--store",
                    store_uri,
                    "--config",
                    config_key,
                ],
                env=_store_env(m, settings),
                resources_per_node=m.IoK8sApiCoreV1ResourceRequirements(limits=quantities, requests=quantities),
            ),
        ),
    )


def _pod_label_patch(m):
    """Labels on the worker pods themselves (the TrainJob's own labels are not copied to them):
    the namespace's NetworkPolicies select pods by these. `node` is the torch-distributed
    runtime's replicated job; the controller strategic-merges this into its JobSet."""
    pod = m.TrainerV1alpha1PodTemplatePatch(metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=POD_LABELS))
    job = m.TrainerV1alpha1ReplicatedJobPatch(
        name="node", template=m.TrainerV1alpha1JobTemplatePatch(spec=m.TrainerV1alpha1JobSpecPatch(template=pod))
    )
    return m.TrainerV1alpha1RuntimePatch(
        manager="ctp.dev/train",
        training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=m.TrainerV1alpha1JobSetTemplatePatch(spec=m.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[job]))
        ),
    )


def _store_env(m, settings: TrainJobSettings) -> list:
    """MinIO endpoint from the settings ConfigMap and credentials from the Secret, as for every step;
    and what torchrun needs to restart a worker group."""

    def ref(name: str, key: str, kind: str):
        selector = (
            m.IoK8sApiCoreV1SecretKeySelector(name=name, key=key)
            if kind == "secret"
            else m.IoK8sApiCoreV1ConfigMapKeySelector(name=name, key=key)
        )
        source = (
            m.IoK8sApiCoreV1EnvVarSource(secret_key_ref=selector)
            if kind == "secret"
            else m.IoK8sApiCoreV1EnvVarSource(config_map_key_ref=selector)
        )
        return m.IoK8sApiCoreV1EnvVar(name=key, value_from=source)

    return [
        *(m.IoK8sApiCoreV1EnvVar(name=k, value=v) for k, v in RESTARTABLE_ENV.items()),
        ref(settings.cluster.minio_secret, "MINIO_ACCESS_KEY", "secret"),
        ref(settings.cluster.minio_secret, "MINIO_SECRET_KEY", "secret"),
        ref(settings.cluster.settings_config_map, "MINIO_ENDPOINT", "config_map"),
        ref(settings.cluster.settings_config_map, "MINIO_SECURE", "config_map"),
    ]


def run(
    settings: TrainJobSettings,
    api,
    *,
    run_id: str,
    num_nodes: int,
    nproc_per_node: int,
    store_uri: str,
    config_key: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = print,
) -> dict:
    """Create the TrainJob and wait until it completes; returns its final status."""
    namespace = settings.namespace or _own_namespace()
    job = build(
        settings,
        name=job_name(run_id),
        namespace=namespace,
        num_nodes=num_nodes,
        nproc_per_node=nproc_per_node,
        store_uri=store_uri,
        config_key=config_key,
    )
    name = job.metadata.name
    _create(api, namespace, job.to_dict(), log)
    return wait(api, namespace, name, settings, sleep=sleep, clock=clock, log=log)


def _create(api, namespace: str, body: dict, log) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        log(f"[trainjob] created {namespace}/{body['metadata']['name']}")
    except ApiException as err:
        if err.status != 409:
            raise TrainJobError(
                f"creating TrainJob {namespace}/{body['metadata']['name']} failed: HTTP {err.status} {err.reason}",
                code="TRAINJOB_SUBMIT",
                hint="check that Kubeflow Trainer is installed and the step's service account "
                "may create trainjobs.trainer.kubeflow.org",
            ) from None
        log(f"[trainjob] {namespace}/{body['metadata']['name']} already exists (a retried step): waiting for it")


def wait(api, namespace: str, name: str, settings: TrainJobSettings, *, sleep, clock, log) -> dict:
    """Poll until a Complete or Failed condition; log every change; delete the job on timeout."""
    deadline = clock() + settings.timeout_s
    last = None
    while True:
        status = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
        summary = describe(status)
        if summary != last:
            log(f"[trainjob] {name}: {summary}")
            last = summary
        conditions = {c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"}
        if "Failed" in conditions:
            c = conditions["Failed"]
            raise TrainJobError(
                f"TrainJob {namespace}/{name} failed: {c.get('reason', '')}: {c.get('message', '')}",
                hint=f"kubectl logs -n {namespace} -l trainer.kubeflow.org/trainjob-name={name}",
            )
        if "Complete" in conditions:
            return status
        if clock() >= deadline:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            raise TrainJobError(
                f"TrainJob {namespace}/{name} did not finish within {settings.timeout_s:.0f} s; deleted it",
                code="TRAINJOB_TIMEOUT",
                hint="raise the timeout, or check for pending pods (GPU quota, node pool size)",
            )
        sleep(settings.poll_s)


def describe(status: dict) -> str:
    """One line: true conditions, and active/ready/succeeded/failed of each child job."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJobStatus

    parsed = TrainerV1alpha1TrainJobStatus.from_dict(status)
    conditions = [f"{c.type}({c.reason})" for c in parsed.conditions or [] if c.status == "True"]
    jobs = [
        f"{j.name} active={j.active} ready={j.ready} succeeded={j.succeeded} failed={j.failed}"
        for j in parsed.jobs_status or []
    ]
    return "; ".join(conditions + jobs) or "pending"


def _own_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except FileNotFoundError:
        raise TrainJobError(
            "num_nodes > 1 needs a namespace and none was given",
            code="NO_CLUSTER",
            hint="run on Kubernetes, or set the TrainJob namespace",
        ) from None


def custom_objects_api():
    """The Kubernetes API from the pod's service account (or a local kubeconfig)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, FileNotFoundError):
            raise TrainJobError(
                "num_nodes > 1 submits a Kubeflow Trainer TrainJob, and no Kubernetes cluster is reachable",
                code="NO_CLUSTER",
                hint="use num_nodes=1 locally, or run the pipeline on Kubeflow",
            ) from None
    return client.CustomObjectsApi()
