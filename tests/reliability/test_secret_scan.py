"""No secret reaches what we ship: the compiled pipeline YAML (compiled with live credentials in
the environment) and every rendered kustomize overlay are scanned for those credential values
(plain and base64) and for common secret patterns."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = [TEST_ACCESS_KEY, TEST_SECRET_KEY, "scan-sentinel-Zq8Kw3Lp9"]
PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "MinIO default credentials": re.compile(r"\bminioadmin\b"),
    "credential with a literal value": re.compile(
        r"(?i)^[ \t]*-?[ \t]*(\w*(password|passwd|secret_?key|access_?key|token|api_?key))[ \t]*[:=][ \t]*['\"]?"
        r"(?!(?-i:[A-Z][A-Z0-9_]*)\b)[A-Za-z0-9/+=_.-]{8,}",  # a value, not the NAME of a Secret key
        re.M,
    ),
    "bearer token": re.compile(r"(?i)bearer\s+[A-Za-z0-9._-]{20,}"),
}


def _findings(name: str, text: str) -> list[str]:
    found = [
        f"{name}: credential value {v[:6]}..."
        for v in CREDENTIALS
        if v in text or base64.b64encode(v.encode()).decode() in text
    ]
    found += [
        f"{name}: {label}: {m.group(0).strip()[:60]}" for label, rx in PATTERNS.items() for m in rx.finditer(text)
    ]
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"{name}: Secret {doc['metadata']['name']} carries values")
    return found


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("scan") / "ct.yaml"
    env = {
        "PATH": "/usr/bin:/bin",
        "MINIO_ENDPOINT": "minio.example:9000",
        "MINIO_ACCESS_KEY": TEST_ACCESS_KEY,
        "MINIO_SECRET_KEY": TEST_SECRET_KEY,
        "KFP_TOKEN": CREDENTIALS[2],
        "CTP_STORE": "s3://ctp/ctp",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "compile", "-o", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    texts = {"compiled pipeline": out.read_text()}
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the overlays"
    for overlay in sorted((ROOT / "manifests" / "overlays").iterdir()):
        rendered = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
        assert rendered.returncode == 0, rendered.stderr
        texts[f"overlay {overlay.name}"] = rendered.stdout
    return texts


def test_scanner_finds_planted_secrets():
    """The scan itself works: each kind of leak is caught when planted."""
    planted = (
        f"env:\n- name: X\n  value: {TEST_SECRET_KEY}\nkey: {base64.b64encode(TEST_ACCESS_KEY.encode()).decode()}\n"
        "aws: AKIAABCDEFGHIJKLMNOP\nMINIO_ROOT_PASSWORD: hunter2hunter2\n---\n"
        "kind: Secret\nmetadata: {name: s}\nstringData: {a: b}\n"
    )
    found = _findings("planted", planted)
    assert len(found) == 5, found


def test_shipped_yaml_holds_no_secrets(shipped):
    assert set(shipped) >= {"compiled pipeline", "overlay multi-user", "overlay standalone"}
    assert all(len(text) > 1000 for text in shipped.values())
    assert [f for name, text in shipped.items() for f in _findings(name, text)] == []
