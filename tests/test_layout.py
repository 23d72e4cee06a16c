"""The package's shape: no import cycle, and the generic core never names the bundled problem's classes."""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchsize_lit"
# The modules that define the bundled problem, or serve it as the default of the entry point.
BUNDLED = {"__init__", "__main__", "data", "model"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, at top level or inside functions."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("batchsize_lit"):
                for alias in node.names:  # `from batchsize_lit.study import run` imports a module, or a name
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("batchsize_lit")}
        graph[name] = {target for target in targets if target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path, node, target]
            if target not in state and (cycle := visit(target, [*path, node])):
                return cycle
        state[node] = 2
        return None

    return next((cycle for node in sorted(graph) if node not in state and (cycle := visit(node, []))), None)


def test_no_import_cycle():
    graph = package_imports()
    assert "batchsize_lit.study.run" in graph and "batchsize_lit.cli" in graph["batchsize_lit.study.run"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_plots_import_nothing_from_the_package():
    assert package_imports()["batchsize_lit.plots"] == set()


def test_generic_modules_never_name_the_bundled_classes():
    named = sorted(
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if path.stem not in BUNDLED and re.search(r"LinearRegressor|RegressionDataModule", path.read_text())
    )
    assert named == []


def test_importing_the_package_imports_no_lightning():
    """`import batchsize_lit` is cheap; the bundled classes are still the package's attributes."""
    code = (
        "import sys, batchsize_lit; print('lightning' in sys.modules, 'torch' in sys.modules);"
        "print(batchsize_lit.LinearRegressor.__module__, batchsize_lit.RegressionDataModule.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "batchsize_lit.model", "batchsize_lit.data"]


def test_the_entry_point_imports_lightning_with_garbage_collection_paused_then_frozen():
    """What `python -m batchsize_lit` imports is out of later collections, and collection is back on."""
    code = (
        "import gc, sys; import batchsize_lit.__main__;"
        "print('lightning.pytorch' in sys.modules, gc.isenabled(), gc.get_freeze_count() > 100_000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "True"]
