"""The package's shape: no import cycle, the core apart from the bundled problems, and their old import paths."""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchsize_lit"
# The modules that may import the bundled problems: the entry point, which names the default problem, the package's
# lazy public names, and the old import paths kept for configs and forks (data.RegressionDataModule, model, digits).
BUNDLED = {f"batchsize_lit{name}" for name in ("", ".__main__", ".data", ".model", ".digits")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lazy_attributes(tree: ast.Module) -> set[ast.AST]:
    """The nodes of a module-level ``__getattr__``: the imports there run only when an attribute is asked for, after
    every module involved has loaded (the package's public names, an old import path), so they make no cycle."""
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"]
    return {inner for function in functions for inner in ast.walk(function)}


def package_imports(lazy: bool = True) -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, at top level or inside functions (with
    ``lazy``, inside a module's ``__getattr__`` too)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text())
        skipped = set() if lazy else lazy_attributes(tree)
        for node in (node for node in ast.walk(tree) if node not in skipped):
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
    graph = package_imports(lazy=False)
    assert "batchsize_lit.study.run" in graph and "batchsize_lit.cli" in graph["batchsize_lit.study.run"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_plots_import_nothing_from_the_package():
    assert package_imports()["batchsize_lit.plots"] == set()


def core_modules() -> list[Path]:
    """The package's modules outside problems/ and BUNDLED."""
    problems = PACKAGE / "problems"
    return [path for path in PACKAGE.rglob("*.py") if problems not in path.parents and module_name(path) not in BUNDLED]


def test_the_core_never_names_the_bundled_classes():
    pattern = r"LinearRegressor|RegressionDataModule|DigitsDataModule|MLPClassifier|CNNClassifier"
    assert sorted(module_name(path) for path in core_modules() if re.search(pattern, path.read_text())) == []


def test_no_core_module_imports_the_problems():
    graph = package_imports()
    importers = sorted(
        name
        for name, targets in graph.items()
        if any(target.startswith("batchsize_lit.problems") for target in targets)
        and not name.startswith("batchsize_lit.problems")
    )
    assert set(importers) <= BUNDLED, importers
    assert "batchsize_lit.__main__" in importers  # the default problem is named there, and the test sees it
    assert all(module_name(path) in graph for path in core_modules())


def test_importing_the_package_imports_no_lightning():
    """`import batchsize_lit` is cheap; the bundled classes are still the package's attributes."""
    code = (
        "import sys, batchsize_lit; print('lightning' in sys.modules, 'torch' in sys.modules);"
        "print(batchsize_lit.LinearRegressor.__module__, batchsize_lit.RegressionDataModule.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "batchsize_lit.problems.regression", "batchsize_lit.problems.regression"]


def test_the_entry_point_imports_lightning_with_garbage_collection_paused_then_frozen():
    """What `python -m batchsize_lit` imports is out of later collections, and collection is back on."""
    code = (
        "import gc, sys; import batchsize_lit.__main__;"
        "print('lightning.pytorch' in sys.modules, gc.isenabled(), gc.get_freeze_count() > 100_000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "True"]
