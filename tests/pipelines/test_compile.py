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


def all_tasks(spec: dict) -> dict:
    """Every task of the pipeline by name: the root DAG's and those inside conditions."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def test_five_steps_under_the_lease_with_deploy_under_the_gate(compiled):
    """ingest alone at the root; the rest runs only when ingest took the model's lease (its single
    str output is not SKIPPED: a condition kfp.local resolves, DESIGN 5); deploy only when the gate
    passed."""
    from components.ingest.config import SKIPPED

    _, spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"ingest", "condition-1"}
    lease_held = root["condition-1"]
    assert f"!= '{SKIPPED}'" in lease_held["triggerPolicy"]["condition"]
    assert "ingest-Output" in lease_held["triggerPolicy"]["condition"]
    assert lease_held["dependentTasks"] == ["ingest"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(inner) == {"validate-data", "train", "evaluate", "condition-2"}
    gate = inner["condition-2"]
    assert "== 'pass'" in gate["triggerPolicy"]["condition"]
    assert "evaluate" in gate["dependentTasks"]
    assert set(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == {"deploy-canary"}
    assert inner["train"]["dependentTasks"] == ["validate-data"]


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


def test_fingerprint_is_a_parameter_and_no_step_is_served_from_the_cache(compiled):
    """Every step records under runs/<run-id>/ and ingest takes the model's lease: a cache hit
    would skip both (and with a per-run input it could never hit; issue 14 found one promised)."""
    _, spec, _ = compiled
    assert "data_fingerprint" in spec["root"]["inputDefinitions"]["parameters"]
    ingest_inputs = spec["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"]
    assert ingest_inputs["data_fingerprint"]["componentInputParameter"] == "data_fingerprint"
    tasks = all_tasks(spec)
    steps = {name: tasks[name] for name in ("ingest", "validate-data", "train", "evaluate", "deploy-canary")}
    for name, task in steps.items():
        assert not task.get("cachingOptions", {}).get("enableCache"), name


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


def compile_with(tmp_path, *args) -> tuple[dict, str]:
    path = tmp_path / "ct.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "compile", "-o", str(path), *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    spec, _ = list(yaml.safe_load_all(path.read_text()))
    return spec, path.read_text()


def images_by_executor(spec: dict) -> dict:
    return {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}


def train_cluster(spec: dict) -> dict:
    return all_tasks(spec)["train"]["inputs"]["parameters"]["cluster"]["runtimeValue"]["constant"]


def test_compile_pins_the_given_image_references(tmp_path):
    """--base-image/--trainer-image (digests allowed) are the only images in the YAML: train runs
    the trainer image, every other step the base image, and the train step's cluster dict (what
    the TrainJob is built from) carries the same trainer image."""
    base = "registry.example/ml/ctp-base@sha256:" + "b" * 64
    trainer = "registry.example/ml/ctp-trainer@sha256:" + "c" * 64
    spec, text = compile_with(tmp_path, "--base-image", base, "--trainer-image", trainer)
    images = images_by_executor(spec)
    assert images.pop("exec-train") == trainer
    assert set(images.values()) == {base} and len(images) == 4
    assert train_cluster(spec)["trainer_image"] == trainer
    assert "ghcr.io/ctp-dev" not in text


def test_compile_names_the_default_images_under_registry_and_tag(tmp_path):
    spec, text = compile_with(tmp_path, "--image-registry", "registry.example/ml/", "--image-tag", "abc123")
    images = images_by_executor(spec)
    assert images.pop("exec-train") == "registry.example/ml/ctp-trainer:abc123"
    assert set(images.values()) == {"registry.example/ml/ctp-base:abc123"}
    assert train_cluster(spec)["trainer_image"] == "registry.example/ml/ctp-trainer:abc123"
    assert "ghcr.io/ctp-dev" not in text


def test_an_explicit_reference_wins_over_registry_and_tag(tmp_path):
    trainer = "other.example/trainer:1"
    spec, _ = compile_with(tmp_path, "--image-tag", "t9", "--trainer-image", trainer)
    images = images_by_executor(spec)
    assert images.pop("exec-train") == trainer
    assert set(images.values()) == {"ghcr.io/ctp-dev/ctp-base:t9"}


def test_upload_compiles_with_the_image_options(tmp_path):
    """`ctp upload` without a package compiles with the same image options as `ctp compile`."""
    from click.testing import CliRunner

    from pipelines.cli import main
    from tests.pipelines.fake_kfp import FakeKfpApi

    trainer = "registry.example/ml/ctp-trainer@sha256:" + "d" * 64
    with FakeKfpApi() as fake:
        result = CliRunner().invoke(
            main, ["upload", "--trainer-image", trainer], env={"KFP_HOST": fake.url, "CTP_NAMESPACE": "ctp"}
        )
        assert result.exit_code == 0, result.output
        (spec,) = fake.specs.values()
    assert images_by_executor(spec)["exec-train"] == trainer


def test_upload_compiles_with_the_cluster_options_and_refuses_them_for_a_package(tmp_path):
    """`ctp upload` without a package compiles with `ctp compile`'s cluster options (issue 14: it
    used to ignore --gpus); with a compiled package they would be silently lost, so they are refused."""
    from click.testing import CliRunner

    from pipelines.cli import main
    from tests.pipelines.fake_kfp import FakeKfpApi

    env = {"CTP_NAMESPACE": "ctp"}
    with FakeKfpApi() as fake:
        env["KFP_HOST"] = fake.url
        result = CliRunner().invoke(main, ["upload", "--gpus", "4", "--node-selector", "pool=a100"], env=env)
        assert result.exit_code == 0, result.output
        (spec,) = fake.specs.values()
        package = tmp_path / "ct.yaml"
        package.write_text("x")
        refused = CliRunner().invoke(main, ["upload", "--gpus", "2", str(package)], env=env)
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceCount"] == "4"
    assert refused.exit_code == 2 and "apply when ctp upload compiles" in refused.output
