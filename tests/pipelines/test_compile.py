"""The compiled KFP IR YAML, loaded back: the real kfp compiler, no backend needed."""

import subprocess
import sys

import pytest
import yaml

SENTINEL_SECRET = "sentinel-secret-value-9f8e7d"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("compile") / "ct.yaml"
    env = {"MINIO_ACCESS_KEY": "sentinel-access-key-1a2b", "MINIO_SECRET_KEY": SENTINEL_SECRET, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "compile",
            "-o",
            str(path),
            "--gpus",
            "2",
            "--node-selector",
            "pool=a100",
            "--toleration-key",
            "gpu-taint",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    spec, platform = list(yaml.safe_load_all(text))
    return text, spec, platform


def test_five_steps_with_deploy_under_the_gate(compiled):
    _, spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"ingest", "validate-data", "train", "evaluate", "condition-1"}
    condition = root["condition-1"]
    assert "== 'pass'" in condition["triggerPolicy"]["condition"]
    assert "evaluate" in condition["dependentTasks"]
    assert set(spec["components"]["comp-condition-1"]["dag"]["tasks"]) == {"deploy-canary"}
    assert root["train"]["dependentTasks"] == ["ingest", "validate-data"]


def test_train_requests_gpus_on_the_gpu_pool(compiled):
    _, spec, platform = compiled
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "2"
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert train["nodeSelector"]["labels"] == {"pool": "a100"}
    assert train["tolerations"] == [{"key": "gpu-taint", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["root"]["inputDefinitions"]["parameters"]["nproc_per_node"]["defaultValue"] == 2


def test_every_step_gets_credentials_from_the_secret_only(compiled):
    text, spec, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{n}" for n in ("ingest", "validate-data", "train", "evaluate", "deploy-canary")}
    for executor in executors.values():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == "ctp-s3-steps"
        assert {k["envVar"] for k in secret["keyToEnv"]} == {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
    assert SENTINEL_SECRET not in text and "sentinel-access-key" not in text
    for executor in spec["deploymentSpec"]["executors"].values():
        env_names = {e["name"] for e in executor["container"].get("env", [])}
        assert not env_names & {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}


def test_fingerprint_is_a_parameter_and_side_effect_steps_never_cache(compiled):
    _, spec, _ = compiled
    assert "data_fingerprint" in spec["root"]["inputDefinitions"]["parameters"]
    ingest_inputs = spec["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"]
    assert ingest_inputs["data_fingerprint"]["componentInputParameter"] == "data_fingerprint"
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["ingest"]["cachingOptions"].get("enableCache") is True
    for name in ("train", "evaluate"):
        assert not tasks[name]["cachingOptions"].get("enableCache")


def test_bad_node_selector_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "compile",
            "-o",
            str(tmp_path / "x.yaml"),
            "--node-selector",
            "nolabel",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "KEY=VALUE" in result.stderr


@pytest.mark.parametrize("overlay", ["multi-user", "standalone"])
def test_compiled_store_refs_are_what_the_manifests_provide(compiled, overlay):
    """The steps' credentials Secret is the one the manifests give the pipeline steps' role
    (the TrainingRuntime's ctp-s3-steps, keys MINIO_ACCESS_KEY / MINIO_SECRET_KEY), and the
    ConfigMap the steps read MINIO_ENDPOINT / MINIO_SECURE from exists in the rendered overlay
    with both keys."""
    from tests.manifests.render import all_pod_templates, containers, find, rendered

    _, _, platform = compiled
    objs = rendered(overlay)
    steps_refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for where, tmpl, obj in all_pod_templates(objs)
        if obj["kind"] == "TrainingRuntime"
        for c in containers(tmpl["spec"])
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    (config_map,) = find(objs, "ConfigMap", "ctp-settings")
    for executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        (secret,) = executor["secretAsEnv"]
        assert {(secret["secretName"], k["secretKey"]) for k in secret["keyToEnv"]} == steps_refs
        (cm,) = executor["configMapAsEnv"]
        assert cm["configMapName"] == config_map["metadata"]["name"]
        assert {k["configMapKey"] for k in cm["keyToEnv"]} <= set(config_map["data"])


# What a KFP >= 2.16 backend adds to every executor pod whatever the task says (kubeflow/pipelines
# 2.17.0, backend/src/v2/compiler/argocompiler/security_context.go,
# applySecurityContextToExecutorTemplate: pod seccomp RuntimeDefault; user container
# allowPrivilegeEscalation=false, capabilities drop ALL, seccomp RuntimeDefault; no runAsNonRoot).
BACKEND_POD_DEFAULTS = {"seccompProfile": {"type": "RuntimeDefault"}}
BACKEND_CONTAINER_DEFAULTS = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def task_pod(executor: dict) -> tuple[dict, dict]:
    """The executor pod a KFP >= 2.16 backend makes of a task's kubernetes platform config:
    securityContext from set_security_context onto the main container over the backend's
    defaults, pod labels and annotations from podMetadata."""
    container_sc = {**BACKEND_CONTAINER_DEFAULTS, **executor.get("securityContext", {})}
    pod = {
        "securityContext": dict(BACKEND_POD_DEFAULTS),
        "containers": [{"name": "main", "securityContext": container_sc}],
    }
    return pod, executor.get("podMetadata", {})


def test_every_task_passes_pod_security_restricted(compiled):
    """Pod Security Standards "restricted" (kubernetes.io/docs/concepts/security/
    pod-security-standards, v1.32; encoded in tests/platform_rules.py) for every task of the
    compiled pipeline: what the task sets (kfp-kubernetes 2.17 set_security_context: runAsNonRoot,
    runAsUser/runAsGroup 10001) plus what the backend adds (kubeflow/pipelines 2.17.0
    backend/src/v2/compiler/argocompiler/security_context.go). Backend floor: KFP 2.16
    (SECURITY_CONTEXT_BACKEND_FLOOR); earlier backends set no securityContext on task pods, so a
    namespace enforcing restricted rejects them. Every task keeps the part-of label (the
    NetworkPolicies select it) and opts out of Istio sidecar injection."""
    from tests.platform_rules import SECURITY_CONTEXT_BACKEND_FLOOR, restricted_violations

    assert SECURITY_CONTEXT_BACKEND_FLOOR == "2.16.0"
    _, _, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == 5
    for name, executor in executors.items():
        # int64 fields: protobuf's JSON form writes them as strings
        assert executor["securityContext"] == {"runAsNonRoot": True, "runAsUser": "10001", "runAsGroup": "10001"}
        pod, meta = task_pod(executor)
        assert not restricted_violations(pod, name, meta.get("annotations")), name
        assert meta["labels"]["app.kubernetes.io/part-of"] == "ctp"
        assert meta["annotations"] == {"sidecar.istio.io/inject": "false"}


def test_the_restricted_check_needs_the_tasks_run_as_non_root():
    """Without the task's runAsNonRoot the backend's defaults alone fail "restricted"."""
    from tests.platform_rules import restricted_violations

    pod, _ = task_pod({})
    assert any("runAsNonRoot" in v for v in restricted_violations(pod))
