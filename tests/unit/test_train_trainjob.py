"""Multi-node training as a Kubeflow Trainer TrainJob: the object sent, and the wait/failure logic
against recorded status sequences. No cluster exists here, so the Kubernetes API is a fake that
replays statuses; every object it receives is parsed back with the Trainer API models."""

from pathlib import Path

import pytest
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
from kubernetes.client.exceptions import ApiException

from components._shared.cluster import ClusterSettings
from components._shared.images import TRAINER_IMAGE
from components.train import trainjob
from components.train.trainjob import TrainJobError, TrainJobSettings

REPO = Path(__file__).resolve().parents[2]
T0 = "2026-11-23T18:00:00Z"


def condition(kind: str, reason: str, message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": T0}


def child(active=0, ready=0, succeeded=0, failed=0) -> dict:
    return {"name": "node", "active": active, "ready": ready, "succeeded": succeeded, "failed": failed, "suspended": 0}


PENDING = {}
RUNNING = {"jobsStatus": [child(active=2, ready=2)]}
COMPLETE = {
    "conditions": [condition("Complete", "JobsCompleted", "TrainJob completed")],
    "jobsStatus": [child(succeeded=2)],
}
FAILED = {"conditions": [condition("Failed", "JobsFailed", "node-0: exit code 1")], "jobsStatus": [child(failed=1)]}


class FakeCustomObjectsApi:
    """No cluster exists here. The Kubernetes API semantics this keeps for one namespace's trainjobs:
    create of a taken name is 409 AlreadyExists, get and delete of a missing one 404; a job reports
    ``statuses`` in turn on each get; a deleted job stays visible (with a deletionTimestamp) for
    ``terminating`` more gets, as an object with dependents being collected does. Only get, create
    and delete exist: Role ctp-steps grants nothing else on trainjobs (no list, no watch)."""

    def __init__(self, statuses, *, create_error=None, existing=None, terminating=0, delete_error=None):
        self.statuses, self.create_error, self.delete_error = list(statuses), create_error, delete_error
        self.terminating = terminating
        self.jobs = {}  # name -> {"body", "statuses", "polls", "gone_in"}
        self.created, self.deleted, self.polls = [], [], 0
        if existing is not None:
            self.jobs[existing["metadata"]["name"]] = {
                "body": existing,
                "statuses": [existing.pop("status", {}), *self.statuses],  # then as a new job would
                "polls": 0,
                "gone_in": None,
            }

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        TrainerV1alpha1TrainJob.from_dict(body)  # what was sent parses as the published API type
        self.created.append((namespace, body))
        if self.create_error:
            raise self.create_error
        if body["metadata"]["name"] in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[body["metadata"]["name"]] = {"body": body, "statuses": self.statuses, "polls": 0, "gone_in": None}
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        job = self.jobs.get(name)
        if job is None:
            raise ApiException(status=404, reason="NotFound")
        if job["gone_in"] is not None:
            if job["gone_in"] == 0:
                del self.jobs[name]
                raise ApiException(status=404, reason="NotFound")
            job["gone_in"] -= 1
        status = job["statuses"][min(job["polls"], len(job["statuses"]) - 1)]
        job["polls"] += 1
        self.polls += 1
        return {**job["body"], "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        assert propagation_policy == "Background"  # the JobSet and pods go too
        if self.delete_error:
            raise self.delete_error
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        self.deleted.append((namespace, name))
        if not self.terminating:
            del self.jobs[name]
            return
        job = self.jobs[name]
        job["body"] = {**job["body"], "metadata": {**job["body"]["metadata"], "deletionTimestamp": T0}}
        job["gone_in"] = self.terminating


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


RUN_ID = "Run-20261123T1800Z_ab"
NAME = trainjob.job_name(RUN_ID)
SETTINGS = TrainJobSettings(namespace="ml", timeout_s=100, poll_s=10)
JOB_ARGS = {"num_nodes": 2, "nproc_per_node": 4, "store_uri": "s3://ctp/ctp", "config_key": "runs/r/train/config.json"}


def run(api, settings=SETTINGS, log=None, config_digest="cfg-1"):
    clock = FakeClock()
    lines = [] if log is None else log
    status = trainjob.run(
        settings,
        api,
        run_id=RUN_ID,
        config_digest=config_digest,
        sleep=clock.sleep,
        clock=clock,
        log=lines.append,
        **JOB_ARGS,
    )
    return status, clock


def existing_job(status, *, run_id=RUN_ID, config_digest="cfg-1", annotations=None) -> dict:
    """A job already in the cluster under this run's job name, as run() would have built it."""
    body = trainjob.build(
        SETTINGS, name=NAME, namespace="ml", run_id=run_id, config_digest=config_digest, **JOB_ARGS
    ).to_dict()
    if annotations is not None:
        body["metadata"]["annotations"] = annotations
    return {**body, "status": status}


def test_the_trainjob_sent_is_a_valid_torch_distributed_job_with_the_entry_point_and_gpus():
    api = FakeCustomObjectsApi([COMPLETE])
    run(api)
    namespace, body = api.created[0]
    job = TrainerV1alpha1TrainJob.from_dict(body)
    assert namespace == "ml" and job.kind == "TrainJob" and job.api_version == "trainer.kubeflow.org/v1alpha1"
    assert job.metadata.name == NAME
    trainer = job.spec.trainer
    assert (trainer.num_nodes, trainer.num_proc_per_node, trainer.image) == (2, 4, TRAINER_IMAGE)  # the default
    assert trainer.command[:3] == ["python", "-m", "torch.distributed.run"]
    assert trainer.command[-6:] == [
        "-m",
        "components.train.ddp",
        "--store",
        "s3://ctp/ctp",
        "--config",
        "runs/r/train/config.json",
    ]
    assert body["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e for e in body["spec"]["trainer"]["env"]}
    assert env["MINIO_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ctp-s3-steps", "key": "MINIO_SECRET_KEY"}
    assert "value" not in env["MINIO_SECRET_KEY"]


def test_job_names_are_dns_labels_and_stable_per_run():
    import re

    for run_id in ("Run-20261123T1800Z_ab", "x" * 200, "job/with:odd chars"):
        name = trainjob.job_name(run_id)
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name) and len(name) <= 63
        assert name == trainjob.job_name(run_id)
    assert trainjob.job_name("a-b") != trainjob.job_name("a_b")


def test_waits_through_pending_and_running_and_logs_each_change():
    api, lines = FakeCustomObjectsApi([PENDING, PENDING, RUNNING, RUNNING, COMPLETE]), []
    status, clock = run(api, log=lines)
    assert status == COMPLETE and api.polls == 5 and clock.now == 40
    changes = [line for line in lines if ": " in line and "created" not in line]
    assert [line.split(": ", 1)[1] for line in changes] == [
        "pending",
        "node active=2 ready=2 succeeded=0 failed=0",
        "Complete(JobsCompleted); node active=0 ready=0 succeeded=2 failed=0",
    ]


def test_a_failed_trainjob_fails_the_step_with_its_reason():
    api = FakeCustomObjectsApi([PENDING, RUNNING, FAILED])
    with pytest.raises(TrainJobError) as err:
        run(api)
    assert err.value.code == "TRAINJOB_FAILED"
    assert "JobsFailed" in err.value.message and "exit code 1" in err.value.message
    assert "kubectl logs" in err.value.hint
    assert api.deleted == []  # a failed job stays for its pods' logs


def test_a_trainjob_that_never_finishes_times_out_and_is_deleted():
    api = FakeCustomObjectsApi([PENDING, RUNNING])
    with pytest.raises(TrainJobError) as err:
        run(api)
    assert err.value.code == "TRAINJOB_TIMEOUT" and "100 s" in err.value.message
    assert api.deleted == [("ml", NAME)]


def test_a_rejected_submission_says_what_to_check():
    api = FakeCustomObjectsApi([COMPLETE], create_error=ApiException(status=403, reason="Forbidden"))
    with pytest.raises(TrainJobError) as err:
        run(api)
    assert err.value.code == "TRAINJOB_SUBMIT" and "403" in err.value.message and "trainjobs" in err.value.hint


def test_cluster_settings_give_each_node_the_gpu_pool_resources():
    settings = TrainJobSettings(
        namespace="ml",
        cluster=ClusterSettings(gpus=8, train_cpu="32", train_memory="256G", accelerator_type="amd.com/gpu"),
    )
    body = trainjob.build(
        settings, name="n", namespace="ml", num_nodes=4, nproc_per_node=8, store_uri="s3://b", config_key="k"
    ).to_dict()
    assert body["spec"]["trainer"]["resourcesPerNode"]["limits"] == {"cpu": "32", "memory": "256G", "amd.com/gpu": "8"}


def test_invalid_node_counts_are_refused():
    with pytest.raises(TrainJobError):
        trainjob.build(
            TrainJobSettings(),
            name="n",
            namespace="ml",
            num_nodes=0,
            nproc_per_node=1,
            store_uri="s3://b",
            config_key="k",
        )


def test_the_trainjob_runs_the_trainer_image_the_pipeline_was_compiled_with():
    """`ctp compile --trainer-image` reaches the TrainJob through the train step's cluster dict."""
    ref = "registry.example/ml/ctp-trainer@sha256:" + "a" * 64
    cluster = ClusterSettings.from_dict(ClusterSettings(trainer_image=ref).to_dict())
    api = FakeCustomObjectsApi([COMPLETE])
    run(api, TrainJobSettings(cluster=cluster, namespace="ml", timeout_s=100, poll_s=10))
    assert TrainerV1alpha1TrainJob.from_dict(api.created[0][1]).spec.trainer.image == ref


# ----------------------------------------------------------------------------- runtime
def _runtime_manifest() -> dict:
    import yaml

    path = REPO / "manifests" / "base" / "ctp-torch-distributed-trainingruntime.yaml"
    return yaml.safe_load(path.read_text())


def test_the_job_references_ctps_namespaced_trainingruntime():
    """kubeflow/trainer v2.3.0 pkg/apis/trainer/v1alpha1/trainjob_types.go RuntimeRef: `name`,
    `apiGroup` (default trainer.kubeflow.org) and `kind` (default ClusterTrainingRuntime, so a
    namespaced TrainingRuntime must be named); pkg/runtime/core/trainingruntime.go looks the runtime
    up in the TrainJob's own namespace. The reference is the TrainingRuntime manifests/base ships."""
    runtime = _runtime_manifest()
    api = FakeCustomObjectsApi([COMPLETE])
    run(api)
    ((namespace, body),) = api.created
    assert body["spec"]["runtimeRef"] == {
        "apiGroup": runtime["apiVersion"].split("/")[0],
        "kind": runtime["kind"],
        "name": runtime["metadata"]["name"],
    }
    assert body["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": "ctp-torch-distributed",
    }
    assert "namespace" not in runtime["metadata"]  # kustomize puts it in the namespace the jobs run in


def test_the_job_patches_nothing_the_runtime_already_sets():
    """kubeflow/trainer v2.3.0 pkg/runtime/framework/plugins/jobset/builder.go (Builder.Trainer):
    the TrainJob's trainer sets image, command, args and env (UpsertEnvVars, by name) of container
    "node" in the runtime's trainer job; everything else on the pod comes from the runtime's
    template. Ours (manifests/base/ctp-torch-distributed-trainingruntime.yaml) already carries the
    NetworkPolicy labels, security context, /dev/shm and (gpu-nodepool) placement, so the job sends
    no runtimePatches at all (it used to patch in the pod labels)."""
    runtime = _runtime_manifest()
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == trainjob.JOB_LABELS  # what ctp-training's NetworkPolicy selects
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert any(m["mountPath"] == "/dev/shm" for m in pod["spec"]["containers"][0]["volumeMounts"])
    api = FakeCustomObjectsApi([COMPLETE])
    run(api)
    ((_, body),) = api.created
    assert "runtimePatches" not in body["spec"] and "podTemplateOverrides" not in body["spec"]
    assert set(body["spec"]["trainer"]) == {"image", "command", "env", "numNodes", "numProcPerNode", "resourcesPerNode"}


# ----------------------------------------------------------------------------- clean-up
def test_a_completed_trainjob_is_deleted_with_its_pods():
    """Role ctp-steps grants get/create/delete on trainjobs (manifests/base/ctp-steps-role.yaml):
    the step deletes its job once it completed (propagation Background: the JobSet and its pods
    are garbage-collected too), so finished jobs do not pile up in the namespace."""
    api, lines = FakeCustomObjectsApi([RUNNING, COMPLETE]), []
    status, _ = run(api, log=lines)
    assert status == COMPLETE and api.deleted == [("ml", NAME)] and NAME not in api.jobs
    assert any("deleted" in line and "completed" in line for line in lines)


def test_a_clean_up_that_is_refused_does_not_fail_a_completed_training():
    api, lines = FakeCustomObjectsApi([COMPLETE], delete_error=ApiException(status=403, reason="Forbidden")), []
    status, _ = run(api, log=lines)
    assert status == COMPLETE and any("could not delete" in line and "403" in line for line in lines)


def test_a_job_deleted_while_waited_for_fails_the_step_clearly():
    api = FakeCustomObjectsApi([RUNNING])
    api.create_namespaced_custom_object = lambda *a, **k: None  # created, then gone before the first get
    with pytest.raises(TrainJobError, match="was deleted while"):
        run(api)


# ----------------------------------------------------------------------------- re-runs
def test_jobs_carry_the_run_id_and_an_attempt_digest():
    build = lambda **kw: trainjob.build(SETTINGS, name=NAME, namespace="ml", run_id=RUN_ID, **{**JOB_ARGS, **kw})  # noqa: E731
    a = build(config_digest="cfg-1").metadata.annotations
    assert a[trainjob.RUN_ID_ANNOTATION] == RUN_ID
    assert build(config_digest="cfg-1").metadata.annotations == a  # a retry with the same inputs
    assert (
        build(config_digest="cfg-2").metadata.annotations[trainjob.ATTEMPT_ANNOTATION] != a[trainjob.ATTEMPT_ANNOTATION]
    )
    assert build(config_digest="cfg-1", num_nodes=3).metadata.annotations != a


def test_a_retried_step_adopts_its_own_running_job():
    """Same run, same attempt (spec and config), still running: a retried step waits for it."""
    api, lines = FakeCustomObjectsApi([COMPLETE], existing=existing_job(RUNNING)), []
    status, _ = run(api, log=lines)
    assert len(api.created) == 1 and api.deleted == [("ml", NAME)]  # created once (409), deleted when done
    assert any("same attempt" in line for line in lines)


def test_a_retried_step_adopts_its_own_completed_job():
    """Same run, same attempt, already Complete (the step died before it could delete the job):
    its outputs in the store are what this attempt would train, so it is adopted, not rerun."""
    api = FakeCustomObjectsApi([COMPLETE], existing=existing_job(COMPLETE))
    status, _ = run(api)
    assert status == COMPLETE and len(api.created) == 1 and api.deleted == [("ml", NAME)]


@pytest.mark.parametrize(
    "status, digest", [(COMPLETE, "cfg-0"), (FAILED, "cfg-1"), (FAILED, "cfg-0"), (RUNNING, "cfg-0")]
)
def test_this_runs_job_from_another_attempt_or_failed_is_replaced_never_adopted(status, digest):
    """A finished job of an earlier attempt of this run (other inputs, e.g. another champion to warm
    start from), a failed one, or one still training other inputs is never adopted: it is deleted,
    the step waits until it is gone (get until 404; no watch) and creates its own."""
    api = FakeCustomObjectsApi([RUNNING, COMPLETE], existing=existing_job(status, config_digest=digest), terminating=2)
    result, _ = run(api)
    assert result == COMPLETE
    assert len(api.created) == 2 and api.deleted == [("ml", NAME), ("ml", NAME)]  # the old one, then ours
    (_, ours) = api.created[1]
    assert ours["metadata"]["annotations"] == existing_job(COMPLETE)["metadata"]["annotations"]


@pytest.mark.parametrize(
    "annotations, owner",
    [
        ({trainjob.RUN_ID_ANNOTATION: "another-run", trainjob.ATTEMPT_ANNOTATION: "x"}, "'another-run'"),
        ({}, "no ctp run"),
    ],
)
@pytest.mark.parametrize("status", [COMPLETE, RUNNING, FAILED])
def test_another_runs_job_under_the_name_is_never_adopted_or_deleted(annotations, owner, status):
    api = FakeCustomObjectsApi([COMPLETE], existing=existing_job(status, annotations=annotations))
    with pytest.raises(TrainJobError) as err:
        run(api)
    assert err.value.code == "TRAINJOB_NAME_TAKEN" and owner in err.value.message and RUN_ID in err.value.message
    assert "another run id" in err.value.hint and f"kubectl delete trainjobs.trainer.kubeflow.org -n ml {NAME}" in (
        err.value.hint
    )
    assert api.deleted == [] and len(api.created) == 1


def test_a_job_of_this_run_still_terminating_is_waited_out():
    existing = existing_job(COMPLETE, config_digest="cfg-0")
    existing["metadata"]["deletionTimestamp"] = T0
    api = FakeCustomObjectsApi([COMPLETE], existing=existing)
    api.jobs[NAME]["gone_in"] = 3
    status, clock = run(api)
    assert status == COMPLETE and api.deleted == [("ml", NAME)] and clock.now == 20  # only ours is deleted


@pytest.mark.parametrize("gpus", [0, 1, 8])
def test_each_node_says_how_many_gpus_it_asked_for(gpus):
    """components/train/core.py fails with CUDA_UNAVAILABLE when CTP_GPUS_REQUESTED > 0 and CUDA is not
    usable; the TrainJob's trainer env reaches container "node" of every node (kubeflow/trainer v2.3.0
    pkg/runtime/framework/plugins/jobset/builder.go, Builder.Trainer: UpsertEnvVars). The name is
    not one Trainer reserves for torchrun (pkg/constants/constants.go TorchRunReservedEnvNames: PET_*)."""
    from components._shared.cluster import GPUS_REQUESTED_ENV

    settings = TrainJobSettings(namespace="ml", cluster=ClusterSettings(gpus=gpus))
    body = trainjob.build(settings, name="n", namespace="ml", **JOB_ARGS).to_dict()
    env = {e["name"]: e.get("value") for e in body["spec"]["trainer"]["env"]}
    assert env.get(GPUS_REQUESTED_ENV) == (str(gpus) if gpus else None)
    assert not GPUS_REQUESTED_ENV.startswith("PET_")
