"""`make image-test`: build both images from a local Debian base, then run the compiled pipeline
inside them the way KFP would, and print what it measured (docs/containers.md).

Needs root, buildah and mmdebstrap (`apt-get install -y buildah mmdebstrap`); no Docker engine, no
registry. Steps:
  1. a Debian bookworm root filesystem (mmdebstrap; its python3 is 3.11) imported as the base image;
  2. `make image-base image-trainer` FROM it with buildah, the host's pip configuration and local
     wheel directories bind-mounted into the build (RUN steps only; nothing of them stays);
  3. hygiene per image: size, build time, uid, no compiler, no pip cache, every installed
     distribution equal to images/constraints.txt, kfp/torch/pyarrow inside == .venv;
  4. the store on moto's S3 server on 127.0.0.1, seeded by `ctp data seed` run in the base image;
  5. the compiled pipeline YAML through kfp.local's own orchestrator (DAG order, dsl.If, executor
     input, placeholder substitution, outputs), with the SDK's Docker task handler swapped for one
     that runs each task's exact command in its image with `buildah run --isolation chroot`;
  6. `ctp models show champion` in the base image: a champion exists, as after `make run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOCAL_BASE = "localhost/ctp-debian-python:bookworm"
# What python:3.11-slim has that matters here: python3 3.11, venv support, CA certificates.
DEBIAN_PACKAGES = "python3,python3-venv,ca-certificates"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BUCKET = "ctp-image-test"
USER_UID = 10001
HOSTNAME = "ctp-task"
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc-12")
# Small but real: the first run has no champion, so the gate needs min_accuracy, which 3 epochs
# of the sample CNN clear; 2 processes run torchrun's DDP inside the trainer image.
PIPELINE_ARGS = {"epochs": 3, "nproc_per_node": 2}


def fail(msg: str) -> None:
    sys.exit(f"image-test: {msg}")


def sh(*cmd: str, capture: bool = True, check: bool = True, **kw) -> str:
    proc = subprocess.run(cmd, text=True, capture_output=capture, **kw)
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip().splitlines()[-1:] if capture else []
        fail(f"`{shlex.join(cmd)}` exited {proc.returncode}{': ' + err[0] if err else ''}")
    return proc.stdout if capture else ""


@dataclass
class Figures:
    base_seconds: float | None = None
    images: dict[str, dict] = field(default_factory=dict)  # ref -> figures
    tasks: list[tuple[str, str, float, int]] = field(default_factory=list)  # task, image, s, rc
    extra: list[str] = field(default_factory=list)


FIG = Figures()


# ---------------------------------------------------------------------------------------- build


def preflight() -> None:
    if os.geteuid() != 0:
        fail("needs root (buildah builds and runs images as root here)")
    for tool in ("buildah", "mmdebstrap"):
        if not shutil.which(tool):
            fail(f"{tool} not found: apt-get install -y buildah mmdebstrap")


def image_exists(ref: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def local_base(rebuild: bool) -> None:
    """Debian bookworm + python3 as an image: the stand-in for python:3.11-slim-bookworm."""
    if image_exists(LOCAL_BASE) and not rebuild:
        print(f"local base {LOCAL_BASE}: present (--rebuild-base makes it anew)")
        return
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ctp-rootfs-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        sh(
            "mmdebstrap",
            "--variant=minbase",
            f"--include={DEBIAN_PACKAGES}",
            "--quiet",
            '--aptopt=Acquire::Check-Valid-Until "false"',
            "bookworm",
            str(tar),
            f"deb {DEBIAN_MIRROR} bookworm main",
            f"deb {DEBIAN_MIRROR} bookworm-updates main",
            f"deb {DEBIAN_MIRROR}-security bookworm-security main",
        )
        ctr = sh("buildah", "from", "scratch").strip()
        try:
            sh("buildah", "add", "--quiet", ctr, str(tar), "/")
            sh(
                "buildah",
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "python3",
                ctr,
            )
            sh("buildah", "commit", "--quiet", "--rm", ctr, LOCAL_BASE)
        except SystemExit:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
            raise
    FIG.base_seconds = time.monotonic() - t0
    print(f"local base {LOCAL_BASE}: built in {FIG.base_seconds:.0f} s")


def host_pip_mounts() -> list[str]:
    """`-v` flags that give a build's RUN steps this host's pip setup: its config files, the
    local indexes / find-links directories / CA bundle they name. pip then resolves exactly as
    `make install` did (the CUDA torch wheels from disk, not GBs of downloads)."""
    paths: set[Path] = set()
    debug = sh(sys.executable, "-m", "pip", "config", "debug")
    paths |= {Path(m) for m in re.findall(r"^\s+(/\S+), exists: True$", debug, re.M)}
    for key, value in re.findall(r"^\S+?\.([\w-]+)='(.*)'$", sh(sys.executable, "-m", "pip", "config", "list"), re.M):
        for item in value.split():
            path = Path(item.removeprefix("file://"))
            if not path.is_absolute() or not path.exists():
                continue
            # a PEP 503 index links to ../../files/...: mount what sits beside its `simple` root
            paths.add(path.parent if key.endswith("index-url") and path.name == "simple" else path)
    return [f"-v {p}:{p}:ro" for p in sorted(paths)]


def image_size(ref: str) -> str:
    return json.loads(sh("buildah", "images", "--json", ref))[0]["size"]


def build_images(no_cache: bool) -> dict[str, str]:
    """{reference: Dockerfile} of what `make images` builds, each built here from the local base."""
    lines = sh("make", "-s", "--no-print-directory", "images-print", cwd=ROOT).split("\n")
    refs = dict(line.split() for line in lines if line.strip())
    if len(refs) != 2:
        fail(f"`make images-print` named {len(refs)} images, expected base and trainer")
    flags = " ".join(host_pip_mounts() + (["--no-cache"] if no_cache else []))
    for ref, dockerfile in refs.items():
        target = "image-" + Path(dockerfile).parent.name
        t0 = time.monotonic()
        # TORCH_PIP_ARGS empty: PyPI's torch from this disk, the build .venv has (no pytorch index here)
        sh(
            "make",
            "--no-print-directory",
            target,
            "IMAGE_ENGINE=buildah",
            f"BASE_IMAGE={LOCAL_BASE}",
            "TORCH_PIP_ARGS=",
            f"IMAGE_BUILD_FLAGS={flags}",
            cwd=ROOT,
            capture=False,
        )
        FIG.images[ref] = {"dockerfile": dockerfile, "build_s": time.monotonic() - t0, "size": image_size(ref)}
    return refs


# -------------------------------------------------------------------------------------- hygiene


def installed_in(rootfs: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    out = {}
    for meta in rootfs.glob("opt/venv/lib/python3*/site-packages/*.dist-info/METADATA"):
        text = meta.read_text(errors="replace")
        name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
        out[canonicalize_name(name)] = re.search(r"^Version: (.+)$", text, re.M).group(1).strip()
    return out


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "images" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


PROBE = r"""
import json, os, kfp, pyarrow, torch
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "home": os.path.expanduser("~"),
  "writable": sorted(d for d in ("/tmp", "/minio", "/s3", "/gcs", os.path.expanduser("~")) if os.access(d, os.W_OK)),
  "kfp": kfp.__version__, "torch": torch.__version__, "pyarrow": pyarrow.__version__,
  "cuda": torch.version.cuda}))
"""


def hygiene(ref: str) -> None:
    """Measured from the image as KFP would start it (its USER, its PATH), plus its file tree."""
    import kfp
    import pyarrow
    import torch  # the .venv's, for the comparison

    fig = FIG.images[ref]
    config = json.loads(sh("buildah", "inspect", "--type", "image", ref))["OCIv1"]["config"]
    fig["user"] = config.get("User", "")
    ctr = sh("buildah", "from", "--pull=never", "--quiet", ref).strip()
    try:
        inside = json.loads(
            sh("buildah", "run", "--isolation", "chroot", ctr, "--", "python3", "-c", PROBE).splitlines()[-1]
        )
        rootfs = Path(sh("buildah", "mount", ctr).strip())
        fig["compilers"] = sorted(
            c for c in COMPILERS for d in ("usr/bin", "usr/local/bin", "opt/venv/bin") if (rootfs / d / c).exists()
        )
        fig["pip_caches"] = sorted(
            str(p.relative_to(rootfs))
            for base in ("root", "home", "tmp")
            for p in (rootfs / base).glob("**/.cache/pip")
        )
        installed = installed_in(rootfs)
        sh("buildah", "umount", ctr)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    fig["inside"] = inside
    venv = {"kfp": kfp.__version__, "torch": torch.__version__, "pyarrow": pyarrow.__version__}
    problems = []
    if inside["uid"] != USER_UID or not fig["user"].startswith(str(USER_UID)):
        problems.append(f"runs as uid {inside['uid']} (image USER {fig['user']!r}), want {USER_UID}")
    for d in ("/tmp", "/minio", "/s3", "/gcs", inside["home"]):
        if d not in inside["writable"]:
            problems.append(f"{d} is not writable by uid {inside['uid']}")
    for name, version in venv.items():
        if inside[name] != version:
            problems.append(f"{name} {inside[name]} inside, {version} in .venv")
    if fig["compilers"]:
        problems.append(f"compilers in the image: {', '.join(fig['compilers'])}")
    if fig["pip_caches"]:
        problems.append(f"pip caches in the image: {', '.join(fig['pip_caches'])}")
    differ = {n: (installed.get(n), v) for n, v in constraints().items() if n in installed and installed[n] != v}
    unpinned = sorted(set(installed) - set(constraints()) - {"ctp", "pip", "setuptools", "wheel"})
    if differ:
        problems.append(f"installed != images/constraints.txt: {differ}")
    if unpinned:
        problems.append(f"installed but not in images/constraints.txt: {', '.join(unpinned)}")
    fig["distributions"] = len(installed)
    if problems:
        fail(f"{ref}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------- pipeline run


def new_container(image: str) -> str:
    # --pull=never: only images built here run; the pod's hostname resolves, as kubelet's
    # /etc/hosts makes it (torchrun's rendezvous looks it up).
    return sh("buildah", "from", "--pull=never", "--quiet", f"--add-host={HOSTNAME}:127.0.0.1", image).strip()


def buildah_run(image: str, command: list[str], env: dict[str, str], mounts: list[str] = ()) -> int:
    """One task: a fresh container from the image (never pulled: only what was built here), its
    command as the image's USER, then the container is removed, like a pod's."""
    ctr = new_container(image)
    try:
        cmd = ["buildah", "run", "--isolation", "chroot", "--network", "host", f"--hostname={HOSTNAME}"]
        cmd += [f"--volume={m}" for m in mounts] + [f"--env={k}={v}" for k, v in env.items()]
        return subprocess.run([*cmd, ctr, "--", *command]).returncode
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def make_task_handler():
    from kfp.local import status, task_handler_interface

    class BuildahTaskHandler(task_handler_interface.ITaskHandler):
        """kfp.local's DockerTaskHandler contract (image, full command with placeholders already
        replaced by the SDK, pipeline root, env), run with buildah instead of a Docker engine. Like
        DockerRunner, the pipeline root is mounted at the same path so artifact URIs resolve."""

        def __init__(self, image, full_command, pipeline_root, runner, env_vars=None):
            self.image, self.full_command, self.pipeline_root = image, list(full_command), pipeline_root
            self.env_vars = dict(env_vars or {})

        def run(self) -> status.Status:
            args = self.full_command
            task = args[args.index("--function_to_execute") + 1] if "--function_to_execute" in args else args[0]
            t0 = time.monotonic()
            rc = buildah_run(self.image, args, self.env_vars, [f"{self.pipeline_root}:{self.pipeline_root}:rw"])
            FIG.tasks.append((task, self.image, time.monotonic() - t0, rc))
            return status.Status.SUCCESS if rc == 0 else status.Status.FAILURE

    return BuildahTaskHandler


def cpu_settings(compile_pipeline) -> tuple:
    """The compile settings' default with gpus=0, as `ctp run` compiles: kfp.local drops resources
    but keeps task env, so a GPU request would make train fail fast on this CPU-only machine.
    Taken from compile_pipeline's own default, not by module name; () if it has no such knob."""
    import dataclasses
    import inspect

    param = inspect.signature(compile_pipeline).parameters.get("settings")
    default = param.default if param is not None else None
    if dataclasses.is_dataclass(default) and "gpus" in {f.name for f in dataclasses.fields(default)}:
        return (dataclasses.replace(default, gpus=0),)
    return ()


def compiled_spec(path: Path):
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        from pipelines.continuous_training import compile_pipeline

        compile_pipeline(str(path), *cpu_settings(compile_pipeline))
    except Exception as exc:  # the one entry point this test relies on
        fail(f"compile_pipeline failed: {type(exc).__name__}: {exc}")
    doc = next(yaml.safe_load_all(path.read_text()))
    return doc, json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())


def run_pipeline(refs: dict[str, str], workdir: Path) -> None:
    import boto3
    from kfp import local
    from kfp.local import docker_task_handler, pipeline_orchestrator
    from moto.server import ThreadedMotoServer

    doc, spec = compiled_spec(workdir / "continuous_training.yaml")
    executors = doc["deploymentSpec"]["executors"]
    unknown = {e["container"]["image"] for e in executors.values()} - set(refs)
    if unknown:
        fail(f"the compiled pipeline names images `make images` does not build: {sorted(unknown)}")
    params = doc["root"]["inputDefinitions"]["parameters"]
    if "store_uri" not in params:
        fail("the compiled pipeline has no store_uri parameter")
    base_ref = next(r for r, d in refs.items() if "/base/" in d)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "MINIO_ENDPOINT": f"{host}:{port}",
            "MINIO_ACCESS_KEY": "image-test",
            "MINIO_SECRET_KEY": "image-test-secret",
            "MINIO_SECURE": "false",
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id=env["MINIO_ACCESS_KEY"],
            aws_secret_access_key=env["MINIO_SECRET_KEY"],
        )
        s3.create_bucket(Bucket=BUCKET)
        store = f"s3://{BUCKET}/ctp"

        t0 = time.monotonic()
        if buildah_run(base_ref, ["ctp", "data", "seed", "--store", store], env) != 0:
            fail("`ctp data seed` failed in the base image")
        FIG.extra.append(f"seed (`ctp data seed` in {base_ref}): {time.monotonic() - t0:.1f} s")

        pipeline_root = workdir / "pipeline-root"
        pipeline_root.mkdir()
        os.chown(pipeline_root, USER_UID, USER_UID)  # the tasks write their outputs there as 10001
        # kfp.local dispatches DockerRunner tasks to docker_task_handler.DockerTaskHandler; this
        # one class is the only part swapped, everything else is the SDK's own code path.
        docker_task_handler.DockerTaskHandler = make_task_handler()
        local.init(runner=local.DockerRunner(environment=env), pipeline_root=str(pipeline_root), raise_on_error=True)
        args = {"store_uri": store, **{k: v for k, v in PIPELINE_ARGS.items() if k in params}}
        print(f"running the compiled pipeline ({len(executors)} executors) with {args}")
        t0 = time.monotonic()
        pipeline_orchestrator.run_local_pipeline(pipeline_spec=spec, arguments=args)
        FIG.extra.append(f"pipeline (all tasks, kfp.local + buildah): {time.monotonic() - t0:.1f} s")

        ran = [t for t, *_ in FIG.tasks]
        want = [
            e["container"]["args"][e["container"]["args"].index("--function_to_execute") + 1]
            for e in executors.values()
        ]
        missing = sorted(set(want) - set(ran))
        if missing:  # e.g. the dsl.If guard skipped deploy (the kfp.local NamedTuple trap, DESIGN 5)
            fail(f"tasks of the compiled YAML that never ran: {missing}")

        ctr = new_container(base_ref)
        try:
            cmd = [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
                *[f"--env={k}={v}" for k, v in env.items()],
                ctr,
                "--",
                "ctp",
                "models",
                "show",
                "champion",
                "--json",
                "--store",
                store,
            ]
            shown = subprocess.run(cmd, capture_output=True, text=True)
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
        if shown.returncode != 0:
            fail(f"no champion in the store after the run: {shown.stderr.strip().splitlines()[-1:]}")
        champion = json.loads(shown.stdout)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="ctp/models/").get("Contents", [])]
        if not any(k.endswith("/aliases/champion.json") for k in keys):
            fail("`ctp models show champion` answered, but no aliases/champion.json object exists")
        summary = {k: champion[k] for k in ("version", "model") if k in champion}
        metrics = champion.get("metrics", {})
        FIG.extra.append(
            f"champion: {summary or champion.get('version', '?')}"
            + (f", accuracy {metrics['accuracy']:.3f}" if isinstance(metrics.get("accuracy"), float) else "")
        )
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- report


def report() -> None:
    print("\n==== make image-test: figures ====")
    if FIG.base_seconds is not None:
        print(f"local Debian base (mmdebstrap + import): {FIG.base_seconds:.0f} s")
    for ref, f in FIG.images.items():
        i = f["inside"]
        print(
            f"{ref} ({f['dockerfile']})\n"
            f"  size {f['size']}, build {f['build_s']:.0f} s, "
            f"{f['distributions']} distributions == images/constraints.txt\n"
            f"  runs as uid {i['uid']} (USER {f['user']}), writable: {', '.join(i['writable'])}\n"
            f"  kfp {i['kfp']}, torch {i['torch']} (CUDA {i['cuda']}), pyarrow {i['pyarrow']}: same as .venv\n"
            f"  compilers: {', '.join(f['compilers']) or 'none'}; pip caches: {', '.join(f['pip_caches']) or 'none'}"
        )
    print("tasks (in the order they ran):")
    for task, image, seconds, rc in FIG.tasks:
        print(f"  {task:<15} {image:<40} {seconds:6.1f} s  exit {rc}")
    for line in FIG.extra:
        print(line)
    print("image-test: passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cache", action="store_true", help="rebuild every layer (buildah bud --no-cache)")
    parser.add_argument("--rebuild-base", action="store_true", help="make the Debian base anew with mmdebstrap")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (pipeline root, YAML)")
    opts = parser.parse_args()
    preflight()
    workdir = Path(tempfile.mkdtemp(prefix="ctp-image-test-"))
    os.chmod(workdir, 0o755)
    try:
        local_base(opts.rebuild_base)
        refs = build_images(opts.no_cache)
        for ref in refs:
            hygiene(ref)
        run_pipeline(refs, workdir)
        report()
    finally:
        if opts.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
