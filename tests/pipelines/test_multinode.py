"""`ctp compile --nodes N`: the train task becomes the TrainJob's launcher and holds no GPU (on a
pool of exactly N GPU nodes a launcher holding one would leave the TrainJob a node short)."""

import yaml

from components._shared.cluster import GPUS_REQUESTED_ENV, ClusterSettings
from pipelines.cluster import SHM_VOLUME
from pipelines.continuous_training import compile_pipeline
from pipelines.run_params import spec_defaults


def compiled(tmp_path, settings: ClusterSettings):
    with open(compile_pipeline(str(tmp_path / "ct.yaml"), settings)) as handle:
        spec, platform = yaml.safe_load_all(handle)
    return spec, platform


def train_parts(spec, platform):
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    task_config = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    return container, task_config


def test_a_multi_node_pipeline_launches_from_a_small_pod_off_the_gpu_pool(tmp_path):
    spec, platform = compiled(tmp_path, ClusterSettings(gpus=8, nodes=4))
    container, task_config = train_parts(spec, platform)
    assert container["resources"].get("accelerator") is None
    assert container["resources"]["cpuLimit"] == 0.5 and container["resources"]["memoryLimit"] < 2e9
    assert not task_config.get("nodeSelector") and not task_config.get("tolerations")
    assert GPUS_REQUESTED_ENV not in {e["name"] for e in container.get("env", [])}
    assert spec_defaults(spec)["num_nodes"] == 4


def test_a_single_node_pipeline_trains_on_the_gpu_pool(tmp_path):
    """The contrast that shows the test above can fail."""
    spec, platform = compiled(tmp_path, ClusterSettings(gpus=8, nodes=1))
    container, task_config = train_parts(spec, platform)
    assert container["resources"]["accelerator"]["resourceCount"] == "8"
    assert task_config["nodeSelector"] and task_config["tolerations"]
    assert spec_defaults(spec)["num_nodes"] == 1


def test_the_single_pod_train_task_has_a_memory_backed_dev_shm(tmp_path):
    """DataLoader workers (loader_workers defaults to 2) pass batches through /dev/shm, which is 64 MB
    in a container unless a volume is mounted there. The KFP driver turns the task's emptyDirMounts
    into an emptyDir volume with that medium and sizeLimit, mounted in the main container
    (kubeflow/pipelines 2.17.0, backend/src/v2/driver/k8s.go, "EmptyDirMounts"). A TrainJob's
    workers get theirs from the TrainingRuntime (manifests/base); its launcher needs none."""
    settings = ClusterSettings(gpus=0, train_shm="2Gi")
    _, task_config = train_parts(*compiled(tmp_path, settings))
    assert task_config["emptyDirMounts"] == [
        {"volumeName": SHM_VOLUME, "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "2Gi"}
    ]
    _, launcher_config = train_parts(*compiled(tmp_path, ClusterSettings(gpus=8, nodes=4)))
    assert "emptyDirMounts" not in launcher_config
