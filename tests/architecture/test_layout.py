"""The house rules of DESIGN.md section 2, checked on the source: no import cycles, steps depend
on components/_shared/ and never on each other, and the serving steps stay free of torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "pipelines")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module a file imports, at the top or inside a function (a lazy import is
    still a dependency): ``from a.b import c`` counts as a.b.c when c is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path a -> ... -> a, or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def step_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "components" and len(parts) > 2 and parts[1] != "_shared" else None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_steps_depend_on_shared_never_on_each_other():
    crossings = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if step_of(module) and step_of(target) and step_of(module) != step_of(target)
    )
    assert crossings == []


def test_shared_depends_on_no_step_and_no_operator_code():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        if module.startswith("components._shared")
        for target in targets
        if step_of(target) or target.startswith("pipelines")
    )
    assert wrong == []


def test_the_graph_sees_real_imports():
    """Guards the checks above against a parser that finds nothing."""
    edges = graph()
    assert "components._shared.model.network" in edges["components.train.core"]
    assert "components.train.torchrun" in edges["components.train.trainjob"]


@pytest.mark.parametrize(
    "modules",
    [
        ["components.evaluate.core", "components.deploy_canary.core", "components.deploy_canary.kserve"],
        ["pipelines.continuous_training"],  # compiling the pipeline needs no torch either
        ["pipelines.cli"],  # nor does `ctp --help`
    ],
)
def test_these_imports_leave_torch_out(modules):
    code = f"import sys\nimport {', '.join(modules)}\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_config_modules_import_only_the_standard_library_and_errors():
    """Step settings are stdlib-only dataclasses: the pipeline and every CLI read their defaults."""
    configs = sorted((ROOT / "components").glob("*/config.py"))
    assert len(configs) == 5
    for path in configs:
        imported = {
            (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert imported <= set(sys.stdlib_module_names) | {"__future__", "components"}, (path, imported)
