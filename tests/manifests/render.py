"""Rendering the kustomize tree (kubectl kustomize, offline) and walking what it renders."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
COMPONENTS = MANIFESTS / "components"
OVERLAYS = MANIFESTS / "overlays"
PROFILE = MANIFESTS / "profile"
OBJECT_STORE = MANIFESTS / "object-store"

# overlay -> (namespace, KFP mode's runner ServiceAccount, components)
OVERLAYS_EXPECTED = {
    "multi-user": ("ctp", "default-editor", ["gpu-nodepool"]),
    "standalone": ("kubeflow", "pipeline-runner", ["gpu-nodepool"]),
}
# Extra renders: each overlay with the opt-in MinIO as well (a kustomization made in a temp dir).
VARIANTS = [*sorted(OVERLAYS_EXPECTED), *(f"{o}+minio" for o in sorted(OVERLAYS_EXPECTED))]
TARGETS = ["base", *VARIANTS]

POD_TEMPLATE_PATHS = {
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Job": ("spec", "template"),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
}


def _kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl is not on PATH: the manifest tests render with `kubectl kustomize` (kustomize v5)")
    return exe


def kustomize(path: Path) -> list[dict]:
    proc = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kustomize_with(tmp: Path, overlay: str, components: list[str]) -> list[dict]:
    """An overlay plus extra components, as an admin's own kustomization would add them."""
    tmp.mkdir(parents=True, exist_ok=True)
    k = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": OVERLAYS_EXPECTED[overlay][0],
        "resources": [os.path.relpath(OVERLAYS / overlay, tmp)],
        "components": [os.path.relpath(COMPONENTS / c, tmp) for c in components],
    }
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return kustomize(tmp)


@functools.cache
def _rendered(name: str) -> tuple:
    if name == "base":
        return tuple(kustomize(BASE))
    if name == "profile":
        return tuple(kustomize(PROFILE))
    if "+" in name:
        import tempfile

        overlay, comp = name.split("+")
        with tempfile.TemporaryDirectory(prefix="ctp-kustomize-") as tmp:
            return tuple(kustomize_with(Path(tmp) / "k", overlay, [comp]))
    return tuple(kustomize(OVERLAYS / name))


def rendered(name: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(name)))


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def ident(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '-')}/{obj['metadata']['name']}"


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, PodTemplateSpec) of every pod template in an object, TrainingRuntimes included."""
    if obj["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
        return [
            (f"{ident(obj)} replicatedJob {rj['name']}", rj["template"]["spec"]["template"])
            for rj in obj["spec"]["template"]["spec"]["replicatedJobs"]
        ]
    if obj["kind"] == "Pod":
        return [(ident(obj), {"metadata": obj["metadata"], "spec": obj["spec"]})]
    path = POD_TEMPLATE_PATHS.get(obj["kind"])
    if path is None:
        return []
    tmpl = obj
    for key in path:
        tmpl = tmpl[key]
    return [(ident(obj), tmpl)]


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    return [(where, t["spec"]) for where, t in pod_templates(obj)]


def all_pod_templates(objs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(where, template, owning object) for every pod template."""
    return [(w, t, o) for o in objs for w, t in pod_templates(o)]


def containers(pod_spec: dict) -> list[dict]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in pod_spec.get(key, [])]


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
