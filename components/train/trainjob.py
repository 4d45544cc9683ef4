"""Multi-node training as a Kubeflow Trainer v2 ``TrainJob`` (torch-distributed runtime).

The object is built from the published Trainer API models (``kubeflow_trainer_api``), so a wrong
field or type fails here, not in the cluster. Each node runs the same entry point as a single
pod, under torchrun (which reads the ``PET_*`` rendezvous variables the Trainer sets), with the
config read from the store. The job references ctp's namespaced ``TrainingRuntime``
``ctp-torch-distributed`` (manifests/base), which already gives every node its restricted security
context, /dev/shm, NetworkPolicy labels and (with the gpu-nodepool component) node selector,
toleration and priority class; the job adds image, command, node count, resources and env.

``run`` creates the job, logs each status change, raises on failure or timeout, and deletes the job
when it completes or times out (a failed one stays for its logs). The job is annotated with the run
id and a digest of what this attempt trains: when the name is taken (HTTP 409), the existing job is
adopted only if it is this run's and this attempt's; a finished job of an earlier attempt of the
same run is deleted and created anew; anyone else's job is TRAINJOB_NAME_TAKEN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from components._shared.cluster import GPUS_REQUESTED_ENV, ClusterSettings
from components._shared.errors import CtpError
from components.train.torchrun import ENTRY_POINT, MAX_RESTARTS, RESTARTABLE_ENV

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUN_ID_ANNOTATION = "ctp.dev/run-id"  # the ctp run the job trains for
ATTEMPT_ANNOTATION = "ctp.dev/attempt"  # sha256 of the job's spec and the config it reads
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(CtpError):
    code = "TRAINJOB_FAILED"


@dataclasses.dataclass(frozen=True)
class TrainJobSettings:
    """The job itself; per-node resources and credentials come from the pipeline's cluster settings."""

    cluster: ClusterSettings = ClusterSettings()
    namespace: str = ""  # empty: the namespace of the pod that submits the job
    # manifests/base/ctp-torch-distributed-trainingruntime.yaml, in the job's namespace
    runtime: str = "ctp-torch-distributed"
    runtime_kind: str = "TrainingRuntime"
    timeout_s: float = 6 * 3600
    poll_s: float = 15.0


def job_name(run_id: str) -> str:
    """A DNS-1123 name that is the same on every retry of the step (so a retry finds its job)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:30].strip("-")
    return f"ctp-train-{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:6]}"


# On the TrainJob object (its worker pods get theirs from the runtime's pod template).
JOB_LABELS = {"app.kubernetes.io/part-of": "ctp", "app.kubernetes.io/component": "training"}


def build(
    settings: TrainJobSettings,
    *,
    name: str,
    namespace: str,
    num_nodes: int,
    nproc_per_node: int,
    store_uri: str,
    config_key: str,
    run_id: str = "",
    config_digest: str = "",
):
    """The TrainJob as the Trainer API model (validated on construction), annotated with the run id
    and the attempt digest (of its spec and ``config_digest``, the content of the config it reads)."""
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
    spec = m.TrainerV1alpha1TrainJobSpec(
        runtime_ref=m.TrainerV1alpha1RuntimeRef(api_group=GROUP, kind=settings.runtime_kind, name=settings.runtime),
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
    )
    digest = {"spec": spec.to_dict(), "config": config_digest}
    attempt = hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()
    return m.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=JOB_LABELS,
            annotations={RUN_ID_ANNOTATION: run_id, ATTEMPT_ANNOTATION: attempt},
        ),
        spec=spec,
    )


def _store_env(m, settings: TrainJobSettings) -> list:
    """MinIO endpoint from the settings ConfigMap and credentials from the Secret, as for every step;
    what torchrun needs to restart a worker group; the GPUs each node asked for (CUDA_UNAVAILABLE
    check)."""

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

    gpus = {GPUS_REQUESTED_ENV: str(settings.cluster.gpus)} if settings.cluster.gpus else {}
    return [
        *(m.IoK8sApiCoreV1EnvVar(name=k, value=v) for k, v in {**RESTARTABLE_ENV, **gpus}.items()),
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
    config_digest: str = "",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = print,
) -> dict:
    """Create the TrainJob (or adopt this attempt's), wait until it completes, delete it; returns
    its final status. ``config_digest`` identifies the content of the config the nodes read."""
    namespace = settings.namespace or _own_namespace()
    job = build(
        settings,
        name=job_name(run_id),
        namespace=namespace,
        num_nodes=num_nodes,
        nproc_per_node=nproc_per_node,
        store_uri=store_uri,
        config_key=config_key,
        run_id=run_id,
        config_digest=config_digest,
    )
    deadline = clock() + settings.timeout_s
    waits = {"sleep": sleep, "clock": clock, "log": log}
    _create_or_adopt(api, namespace, job.to_dict(), settings, deadline, **waits)
    status = wait(api, namespace, job.metadata.name, settings, deadline=deadline, **waits)
    _delete(api, namespace, job.metadata.name, log, why="completed")
    return status


def _create_or_adopt(api, namespace: str, body: dict, settings: TrainJobSettings, deadline: float, **waits) -> None:
    """Create the job; when its name is taken, adopt, replace or refuse the one there (see the module doc)."""
    from kubernetes.client.exceptions import ApiException

    name, log = body["metadata"]["name"], waits["log"]
    while True:
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            log(f"[trainjob] created {namespace}/{name}")
            return
        except ApiException as err:
            if err.status != 409:
                raise TrainJobError(
                    f"creating TrainJob {namespace}/{name} failed: HTTP {err.status} {err.reason}",
                    code="TRAINJOB_SUBMIT",
                    hint="check that Kubeflow Trainer is installed, the TrainingRuntime "
                    f"{settings.runtime} exists in {namespace} (manifests/base), and the step's service account "
                    "may create trainjobs.trainer.kubeflow.org",
                ) from None
        existing = _get(api, namespace, name)
        if existing is None:  # deleted between our create and get: create again
            continue
        if _adopt_or_replace(existing, body, namespace) == "adopt":
            log(f"[trainjob] {namespace}/{name} is this run's, same attempt (a retried step): waiting for it")
            return
        if not (existing.get("metadata") or {}).get("deletionTimestamp"):
            log(f"[trainjob] {namespace}/{name} is left from an earlier attempt of this run: deleting it")
            _delete(api, namespace, name, log, why="replaced")
        _wait_gone(api, namespace, name, settings, deadline, **waits)


def _adopt_or_replace(existing: dict, body: dict, namespace: str) -> str:
    """'adopt' this run's job of this attempt unless it failed; 'replace' this run's other jobs;
    raise TRAINJOB_NAME_TAKEN for a job of another run (or not made by ctp)."""
    name = body["metadata"]["name"]
    ours, theirs = body["metadata"]["annotations"], (existing.get("metadata") or {}).get("annotations") or {}
    if theirs.get(RUN_ID_ANNOTATION) != ours[RUN_ID_ANNOTATION]:
        owner = theirs.get(RUN_ID_ANNOTATION)
        raise TrainJobError(
            f"TrainJob {namespace}/{name} exists and belongs to "
            + (f"run {owner!r}" if owner else "no ctp run")
            + f", not run {ours[RUN_ID_ANNOTATION]!r}",
            code="TRAINJOB_NAME_TAKEN",
            hint=f"job names derive from the run id: give this run another run id, or delete the job "
            f"(kubectl delete trainjobs.trainer.kubeflow.org -n {namespace} {name})",
        )
    if (existing.get("metadata") or {}).get("deletionTimestamp"):
        return "replace"
    finished = _true_conditions(existing.get("status") or {})
    same_attempt = theirs.get(ATTEMPT_ANNOTATION) == ours[ATTEMPT_ANNOTATION]
    return "adopt" if same_attempt and "Failed" not in finished else "replace"


def _get(api, namespace: str, name: str) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _delete(api, namespace: str, name: str, log, *, why: str) -> None:
    """Delete the job and, in the background, its JobSet and pods; a job already gone is fine.
    Clean-up failing after a completed training is logged, not raised: the model is in the store."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background")
        log(f"[trainjob] deleted {namespace}/{name} ({why})")
    except ApiException as err:
        if err.status == 404:
            return
        if why != "completed":
            raise TrainJobError(
                f"deleting TrainJob {namespace}/{name} failed: HTTP {err.status} {err.reason}",
                code="TRAINJOB_SUBMIT",
                hint="the step's service account needs delete on trainjobs.trainer.kubeflow.org",
            ) from None
        log(f"[trainjob] WARNING: could not delete {namespace}/{name}: HTTP {err.status} {err.reason}")


def _wait_gone(api, namespace: str, name: str, settings: TrainJobSettings, deadline: float, *, sleep, clock, log):
    while _get(api, namespace, name) is not None:
        if clock() >= deadline:
            raise TrainJobError(
                f"TrainJob {namespace}/{name} of an earlier attempt was still being deleted after "
                f"{settings.timeout_s:.0f} s",
                code="TRAINJOB_TIMEOUT",
                hint=f"check its finalizers: kubectl get trainjobs.trainer.kubeflow.org -n {namespace} {name} -o yaml",
            )
        sleep(settings.poll_s)


def _true_conditions(status: dict) -> dict:
    return {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}


def wait(
    api, namespace: str, name: str, settings: TrainJobSettings, *, sleep, clock, log, deadline: float | None = None
) -> dict:
    """Poll until a Complete or Failed condition; log every change; delete the job on timeout."""
    deadline = clock() + settings.timeout_s if deadline is None else deadline
    last = None
    while True:
        found = _get(api, namespace, name)
        if found is None:
            raise TrainJobError(
                f"TrainJob {namespace}/{name} was deleted while this step waited for it",
                hint="someone (or another attempt of this run) deleted it; retry the step",
            )
        status = found.get("status") or {}
        summary = describe(status)
        if summary != last:
            log(f"[trainjob] {name}: {summary}")
            last = summary
        conditions = _true_conditions(status)
        if "Failed" in conditions:
            c = conditions["Failed"]
            raise TrainJobError(
                f"TrainJob {namespace}/{name} failed: {c.get('reason', '')}: {c.get('message', '')}",
                hint=f"kubectl logs -n {namespace} -l trainer.kubeflow.org/trainjob-name={name}",
            )
        if "Complete" in conditions:
            return status
        if clock() >= deadline:
            _delete(api, namespace, name, log, why="timed out")
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
