"""CTP_GPUS_REQUESTED: the train step fails with CUDA_UNAVAILABLE when its pod asked for GPUs and CUDA
is not usable (components/train/core.py). The variable is set where GPUs are asked for: on the train
task of the compiled pipeline (pipelines/cluster.py place_on_gpu_pool) and on every TrainJob node
(tests/unit/test_train_trainjob.py). `ctp run` goes through kfp.local, which applies task env vars,
so it builds the pipeline with gpus=0 and keeps working on a machine without CUDA."""

import dataclasses
import os

import pytest
import yaml
from google.protobuf import json_format
from kfp import dsl, local

from components._shared.cluster import GPUS_REQUESTED_ENV, ClusterSettings
from pipelines.continuous_training import build_pipeline, compile_pipeline


def executor_envs(spec: dict) -> dict[str, dict[str, str]]:
    """executor label -> {env name: value} of its container."""
    executors = spec["deploymentSpec"]["executors"]
    return {label: {e["name"]: e["value"] for e in ex["container"].get("env", [])} for label, ex in executors.items()}


def compiled_envs(tmp_path, settings: ClusterSettings) -> dict[str, dict[str, str]]:
    path = compile_pipeline(str(tmp_path / "p.yaml"), settings)
    with open(path) as handle:
        (spec,) = [d for d in yaml.safe_load_all(handle) if "deploymentSpec" in d]
    return executor_envs(spec)


@pytest.mark.parametrize("gpus", [1, 4])
def test_the_compiled_train_task_says_how_many_gpus_its_pod_asked_for(tmp_path, gpus):
    envs = compiled_envs(tmp_path, ClusterSettings(gpus=gpus))
    assert envs["exec-train"] == {GPUS_REQUESTED_ENV: str(gpus)}
    assert all(GPUS_REQUESTED_ENV not in env for label, env in envs.items() if label != "exec-train")


def test_a_cpu_compile_sets_no_gpu_request(tmp_path):
    assert all(GPUS_REQUESTED_ENV not in env for env in compiled_envs(tmp_path, ClusterSettings(gpus=0)).values())


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _read_env(name: str) -> str:
    import os

    return os.environ.get(name, "<unset>")


def test_kfp_local_subprocess_runner_applies_task_env_vars(tmp_path, monkeypatch):
    """kubeflow/pipelines sdk-2.17.0-1, sdk/python/kfp/local/task_dispatcher.py
    (_extract_container_env_vars: the task container's env goes to the task handler) and
    sdk/python/kfp/local/subprocess_task_handler.py (run_local_subprocess: env = {**os.environ,
    **env_vars}): SubprocessRunner applies task env vars, unlike resources, accelerators and node
    selectors. Checked against the installed kfp too, by running one task."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CTP_TEST_ENV", raising=False)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def one_task() -> str:
        return _read_env(name="CTP_TEST_ENV").set_env_variable("CTP_TEST_ENV", "set-on-the-task").output

    assert one_task().output == "set-on-the-task"
    assert "CTP_TEST_ENV" not in os.environ


def test_ctp_run_builds_the_pipeline_without_a_gpu_request():
    """So the train step of `ctp run` (kfp.local, above) never gets CTP_GPUS_REQUESTED on a CPU
    machine, whatever the compile defaults (gpus=1)."""
    from pipelines.local_run import LOCAL_CLUSTER

    assert ClusterSettings().gpus > 0 and LOCAL_CLUSTER.gpus == 0
    spec = json_format.MessageToDict(build_pipeline(LOCAL_CLUSTER).pipeline_spec)
    assert all(GPUS_REQUESTED_ENV not in env for env in executor_envs(spec).values())
    assert dataclasses.replace(ClusterSettings(), gpus=0) == LOCAL_CLUSTER  # everything else as compiled


def test_run_locally_uses_the_cpu_settings(monkeypatch):
    import pipelines.continuous_training as ct
    from pipelines import local_run

    seen = []

    def refuse(settings=ClusterSettings()):
        seen.append(settings)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ct, "build_pipeline", refuse)
    monkeypatch.setattr(local_run, "open_store", lambda uri: None)
    with pytest.raises(RuntimeError, match="stop here"):
        local_run.run_locally(local_run.LocalRunOptions())
    assert seen == [local_run.LOCAL_CLUSTER]
