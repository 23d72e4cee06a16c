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


def package_trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines, its docstring aside."""
    body = function.body
    if (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_classes_and_functions_stay_short():
    """A class fits on a few screens and a function on one: over 200 or 50 lines, it does more than one job."""
    long = []
    for path, tree in package_trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200:
                long.append(f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > 50:
                long.append(f"{module_name(path)}.{node.name}: body of {body_lines(node)} lines")
    assert long == [], long


def private_names(tree: ast.Module) -> list[tuple[int, str]]:
    """The private names a module reaches: `x._name` and `getattr(x, "_name")`, and `from m import _name`."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and re.fullmatch(r"_[A-Za-z]\w*", node.attr)
            and not node.attr.endswith("__")
        ):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and name.value.startswith("_"):
                found.append((node.lineno, name.value))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("batchsize_lit"):
            private_module = any(part.startswith("_") for part in node.module.split("."))
            found += [(node.lineno, a.name) for a in node.names if private_module or a.name.startswith("_")]
    return found


def test_other_packages_private_names_only_in_compat():
    """A private name of Lightning, jsonargparse or torch can change in any release: compat.py holds every use, each
    with its test in test_compat.py. A private name the package defines itself is its own business."""
    trees = package_trees()
    own = {n.attr for tree in trees.values() for n in ast.walk(tree) if isinstance(n, ast.Attribute)
           and isinstance(n.ctx, ast.Store)}  # fmt: skip
    own |= {n.name for tree in trees.values() for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    own |= {"_exit", "_fields"}  # os._exit, a namedtuple's _fields: documented, public
    foreign = [
        f"{module_name(path)}:{line} {name}"
        for path, tree in trees.items()
        if path.name != "compat.py"
        for line, name in private_names(tree)
        if name not in own
    ]
    assert foreign == [], foreign


def test_the_private_name_finder_finds_them():
    tree = ast.parse("import x\nfrom a._b import c\nfrom d import _e\nx._trainer\ngetattr(x, '_log_hyperparams')\n")
    assert [name for _, name in private_names(tree)] == ["c", "_e", "_trainer", "_log_hyperparams"]


def test_every_compat_entry_has_a_test():
    compat = ast.parse((PACKAGE / "compat.py").read_text())
    entries = [
        n.name for n in compat.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_")
    ]
    entries += [t.id for n in compat.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name) and t.id.isupper() and not t.id.startswith("_")]  # fmt: skip
    tests = (PACKAGE.parent / "tests" / "test_compat.py").read_text()
    assert entries and [name for name in entries if not re.search(rf"\b{name}\b", tests)] == []


def test_the_command_s_name_in_usage_lines_is_the_installed_script_s_and_follows_the_package_s():
    """Usage lines and hints say COMMAND: the script pyproject.toml installs, derived from the package's name so
    that a fork that renames the package is not told to run a command it no longer has."""
    import tomllib

    import batchsize_lit

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get(batchsize_lit.COMMAND) == f"{batchsize_lit.__name__}.__main__:main"
    names = ["batchsize_lit/cli.py", "batchsize_lit/parse_errors.py", "batchsize_lit/study/__init__.py"]
    assert not [name for name in names if "batchsize-lit" in (PACKAGE.parent / name).read_text()]
