"""What a task of the compiled pipeline needs from its image, checked without building one.

- every executor's image is one that `make images` builds (`make images-print` lists them);
- every module a task starts (`python3 -m X`) or its embedded code imports exists in that image:
  `components.*` / `pipelines.*` in the wheel built from exactly what the Dockerfile COPYs (so a
  folder the Dockerfile does not copy, or one package discovery leaves out, fails here), anything
  else in a distribution images/constraints.txt pins;
- every Python file of the project's packages lands in the image; images/requirements.txt is
  pyproject's dependency list and images/constraints.txt pins its whole runtime closure (a new
  dependency without `make images-lock` fails).

The checkers are plain functions returning violations; `test_checkers_catch_*` feed them broken
inputs, so a checker that passes everything fails here. `make image-test` (opt-in, buildah) runs
the same pipeline inside the built images.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROJECT_TOPS = ("components", "pipelines")


def _lock_module():
    spec = importlib.util.spec_from_file_location("ctp_images_lock", REPO / "images" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ checkers


def built_images() -> dict[str, str]:
    """{image reference: Dockerfile path} as `make images` builds them."""
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "images-print", f"IMAGES_PYTHON={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"`make images-print` failed: {proc.stderr.strip()}"
    return dict(line.split() for line in proc.stdout.splitlines() if line.strip())


def image_violations(executors: dict, images: dict[str, str]) -> list[str]:
    return [
        f"{name}: image {e['container']['image']} is not built by `make images` (it builds {sorted(images)})"
        for name, e in executors.items()
        if e["container"]["image"] not in images
    ]


def task_modules(container: dict) -> set[str]:
    """Modules the task's command starts with `-m` plus the absolute imports of embedded code."""
    modules: set[str] = set()
    for part in container.get("command", []) + container.get("args", []):
        modules |= set(re.findall(r"python3?\s+-m\s+([\w.]+)", part))
        try:
            tree = ast.parse(part)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    return {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names}


def dockerfile_context(dockerfile: Path, repo: Path, dest: Path) -> Path:
    """Stage what the Dockerfile COPYs from the repo into the directory it runs `pip install .`
    in; returns that directory (COPY --from and ADD do not feed the project install here)."""
    workdir, install_dir = Path("/"), None
    for line in re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "WORKDIR":
            workdir = workdir / words[1]
        elif op == "COPY" and not any(w.startswith("--from") for w in words[1:]):
            *srcs, target = [w for w in words[1:] if not w.startswith("--")]
            target_path = dest / (workdir / target).relative_to("/")
            for src in srcs:
                source = repo / src
                if source.is_dir():
                    shutil.copytree(
                        source, target_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                elif source.is_file():
                    out = target_path / source.name if target.endswith("/") or len(srcs) > 1 else target_path
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, out)
        elif op == "RUN" and re.search(r"pip install\b.* \.(\s|$)", line):
            install_dir = workdir
    assert install_dir is not None, f"{dockerfile}: no `pip install ... .` of the project"
    return dest / install_dir.relative_to("/")


def wheel_modules(context: Path, out: Path) -> set[str]:
    """Module names in the wheel pip builds from the staged context: what `pip install .` puts
    into the image."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(out),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"building the project wheel from the Dockerfile's COPYs failed: {proc.stderr[-2000:]}"
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = set()
    for name in names:
        if name.endswith(".py"):
            parts = name[:-3].split("/")
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


@functools.cache
def _distributions_of(top: str) -> tuple[str, ...]:
    return tuple(metadata.packages_distributions().get(top, []))


@functools.cache
def _files_of(dist_name: str) -> frozenset[str]:
    return frozenset(str(f) for f in metadata.distribution(dist_name).files or [])


def owning_distribution(module: str) -> str | None:
    """The installed distribution whose files hold `module` (kfp.dsl.executor_main -> kfp)."""
    rel = module.replace(".", "/")
    for dist_name in _distributions_of(module.split(".")[0]):
        if {f"{rel}.py", f"{rel}/__init__.py"} & _files_of(dist_name):
            return dist_name
    return None


def module_violations(
    executors: dict, images: dict[str, str], image_modules: dict[str, set[str]], pinned: set[str]
) -> list[str]:
    from packaging.utils import canonicalize_name

    problems = []
    for name, e in executors.items():
        image = e["container"]["image"]
        if image not in images:
            continue  # image_violations reports it
        for module in sorted(task_modules(e["container"])):
            if module.split(".")[0] in PROJECT_TOPS:
                if module not in image_modules[image]:
                    problems.append(
                        f"{name}: {module} is not in {image} (not in what {images[image]} COPYs and installs)"
                    )
            else:
                dist = owning_distribution(module)
                if dist is None or canonicalize_name(dist) not in pinned:
                    problems.append(
                        f"{name}: {module} comes from {dist or 'no installed distribution'}, "
                        f"which images/constraints.txt does not pin"
                    )
    return problems


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    found = built_images()
    assert len(found) == 2, f"`make images-print` should list base and trainer, got {found}"
    return found


@pytest.fixture(scope="module")
def executors(tmp_path_factory) -> dict:
    from pipelines.continuous_training import compile_pipeline

    path = tmp_path_factory.mktemp("compiled") / "continuous_training.yaml"
    compile_pipeline(str(path))
    return next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]


def _tree(root: Path) -> tuple:
    return tuple(sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()))


@pytest.fixture(scope="module")
def image_modules(images, tmp_path_factory) -> dict[str, set[str]]:
    out, built = {}, {}
    for ref, dockerfile in images.items():
        context = dockerfile_context(REPO / dockerfile, REPO, tmp_path_factory.mktemp("context"))
        key = _tree(context)  # both Dockerfiles copy the same files today: build that wheel once
        if key not in built:
            built[key] = wheel_modules(context, tmp_path_factory.mktemp("wheel"))
        out[ref] = built[key]
    return out


@pytest.fixture(scope="module")
def pinned() -> set[str]:
    lines = (REPO / "images" / "constraints.txt").read_text().splitlines()
    return {line.split("==")[0] for line in lines if line and not line.startswith("#")}


# --------------------------------------------------------------------------------------- tests


def test_every_task_names_an_image_make_images_builds(executors, images):
    assert executors, "the compiled pipeline has no executors"
    problems = image_violations(executors, images)
    assert not problems, "\n".join(problems)


def test_every_module_a_task_needs_is_in_its_image(executors, images, image_modules, pinned):
    # the check must see the modules at all: the executor and the project's step modules
    needed = set().union(*(task_modules(e["container"]) for e in executors.values()))
    assert "kfp.dsl.executor_main" in needed and any(m.startswith("components.") for m in needed), sorted(needed)
    problems = module_violations(executors, images, image_modules, pinned)
    assert not problems, "\n".join(problems)


def test_every_project_module_lands_in_both_images(image_modules):
    on_disk = set()
    for top in PROJECT_TOPS:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            on_disk.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    for ref, modules in image_modules.items():
        missing = sorted(on_disk - modules)
        assert not missing, f"{ref} lacks {missing}: not COPYed by its Dockerfile, or left out by package discovery"


def test_requirements_are_pyprojects_dependencies():
    lock = _lock_module()
    lines = [
        line
        for line in (REPO / "images" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines == lock.runtime_requirements(), (
        "images/requirements.txt differs from pyproject: run `make images-lock`"
    )


def test_constraints_pin_the_runtime_closure(pinned):
    closure = _lock_module().runtime_closure()
    missing = sorted(set(closure) - pinned)
    assert not missing, f"images/constraints.txt does not pin {missing}: run `make images-lock`"
    assert {"kfp", "torch", "pyarrow"} <= pinned


def test_checkers_catch_a_foreign_image_and_missing_modules(tmp_path, images, image_modules, pinned):
    ref = next(iter(images))
    code = "from components.nonexistent.core import run\nimport yaml_not_installed\n"
    bad = {
        "exec-x": {"container": {"image": "docker.io/library/python:3.11", "command": ["sh", "-c", "true"]}},
        "exec-y": {"container": {"image": ref, "command": ["sh", "-ec", "python3 -m kfp.dsl.executor_main", code]}},
    }
    assert any("exec-x" in p for p in image_violations(bad, images))
    problems = module_violations(bad, images, image_modules, pinned)
    assert any("components.nonexistent.core" in p for p in problems), problems
    assert any("yaml_not_installed" in p for p in problems), problems
    assert not any("kfp.dsl.executor_main" in p for p in problems), problems
    # unpinned third-party distribution: kfp dropped from the pins
    assert any("kfp.dsl.executor_main" in p for p in module_violations(bad, images, image_modules, pinned - {"kfp"}))


def test_checkers_catch_a_dockerfile_that_does_not_copy_pipelines(tmp_path, images):
    dockerfile = REPO / next(iter(images.values()))
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.startswith("COPY pipelines"))
    )
    modules = wheel_modules(dockerfile_context(broken, REPO, tmp_path / "ctx"), tmp_path / "wheel")
    assert "components._shared" in modules and not any(m.startswith("pipelines") for m in modules)
