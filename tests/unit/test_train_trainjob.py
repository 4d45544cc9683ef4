"""Multi-node training as a Kubeflow Trainer TrainJob: the object sent, and the wait/failure logic
against recorded status sequences. No cluster exists here, so the Kubernetes API is a fake that
replays statuses; every object it receives is parsed back with the Trainer API models."""

import pytest
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
from kubernetes.client.exceptions import ApiException

from components._shared.cluster import ClusterSettings
from components._shared.images import TRAINER_IMAGE
from components.train import trainjob
from components.train.trainjob import TrainJobError, TrainJobSettings

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


class FakeCustomObjectsApi:  # no cluster exists here: replays a recorded sequence of TrainJob statuses
    def __init__(self, statuses, *, create_error: ApiException | None = None):
        self.statuses, self.create_error = list(statuses), create_error
        self.created, self.deleted, self.polls = [], [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        TrainerV1alpha1TrainJob.from_dict(body)  # what was sent parses as the published API type
        self.created.append((namespace, body))
        if self.create_error:
            raise self.create_error
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses[min(self.polls, len(self.statuses) - 1)]
        self.polls += 1
        return {"metadata": {"name": name, "namespace": namespace}, "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append((namespace, name))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(api, settings=TrainJobSettings(namespace="ml", timeout_s=100, poll_s=10), log=None):
    clock = FakeClock()
    lines = [] if log is None else log
    status = trainjob.run(
        settings,
        api,
        run_id="Run-20261123T1800Z_ab",
        num_nodes=2,
        nproc_per_node=4,
        store_uri="s3://ctp/ctp",
        config_key="runs/r/train/config.json",
        sleep=clock.sleep,
        clock=clock,
        log=lines.append,
    )
    return status, clock


def test_the_trainjob_sent_is_a_valid_torch_distributed_job_with_the_entry_point_and_gpus():
    api = FakeCustomObjectsApi([COMPLETE])
    run(api)
    namespace, body = api.created[0]
    job = TrainerV1alpha1TrainJob.from_dict(body)
    assert namespace == "ml" and job.kind == "TrainJob" and job.api_version == "trainer.kubeflow.org/v1alpha1"
    assert job.metadata.name == trainjob.job_name("Run-20261123T1800Z_ab")
    assert job.spec.runtime_ref.name == "torch-distributed"
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
    assert api.deleted == []


def test_a_failed_trainjob_fails_the_step_with_its_reason():
    api = FakeCustomObjectsApi([PENDING, RUNNING, FAILED])
    with pytest.raises(TrainJobError) as err:
        run(api)
    assert err.value.code == "TRAINJOB_FAILED"
    assert "JobsFailed" in err.value.message and "exit code 1" in err.value.message
    assert "kubectl logs" in err.value.hint


def test_a_trainjob_that_never_finishes_times_out_and_is_deleted():
    api = FakeCustomObjectsApi([PENDING, RUNNING])
    with pytest.raises(TrainJobError) as err:
        run(api)
    assert err.value.code == "TRAINJOB_TIMEOUT" and "100 s" in err.value.message
    assert api.deleted == [("ml", trainjob.job_name("Run-20261123T1800Z_ab"))]


def test_a_retried_step_adopts_the_job_it_already_created():
    api = FakeCustomObjectsApi([RUNNING, COMPLETE], create_error=ApiException(status=409, reason="AlreadyExists"))
    status, _ = run(api)
    assert status == COMPLETE and len(api.created) == 1


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


def test_worker_pods_carry_the_network_policy_labels_through_a_runtime_patch():
    api = FakeCustomObjectsApi(statuses=[COMPLETE])
    run(api)
    ((_, body),) = api.created
    (patch,) = body["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    assert node["template"]["spec"]["template"]["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "ctp",
        "app.kubernetes.io/component": "training",
    }


def test_the_trainjob_runs_the_trainer_image_the_pipeline_was_compiled_with():
    """`ctp compile --trainer-image` reaches the TrainJob through the train step's cluster dict."""
    ref = "registry.example/ml/ctp-trainer@sha256:" + "a" * 64
    cluster = ClusterSettings.from_dict(ClusterSettings(trainer_image=ref).to_dict())
    api = FakeCustomObjectsApi([COMPLETE])
    run(api, TrainJobSettings(cluster=cluster, namespace="ml", timeout_s=100, poll_s=10))
    assert TrainerV1alpha1TrainJob.from_dict(api.created[0][1]).spec.trainer.image == ref
