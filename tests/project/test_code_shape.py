"""The shape of the code (issue 26): no function over 80 lines, none with more than 7 parameters, no import circle.

Read from the source (``ast``), nothing imported: every ``.py`` of the packages, ``benchmarks/`` and ``docs/*.py``.
Lines are a function's whole extent (decorators excluded, its docstring included); parameters are all of them
(positional, keyword-only, ``*args``, ``**kwargs``) except ``self``/``cls``. The import graph holds every import
statement, function-level ones included (a late import hides a circle from Python, not from a reader), and every
``importlib.import_module("a.literal.name")``.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "common",
    "inference",
    "data_ingestion",
    "data_processing",
    "model_training",
    "model_serving",
    "batch_prediction",
    "monitoring",
    "ric",
)
# Folders of scripts run by path: their own folder is on sys.path, so they import each other by bare name.
SCRIPT_DIRS = ("benchmarks",)

MAX_LINES = 80
MAX_PARAMS = 7

# Declarative literals, long because what they declare is long; each with why it stays one function.
LONG_ALLOWED = {
    "model_serving/openapi.py::build_spec": "the OpenAPI document: one literal, read top to bottom like the spec",
}


def source_files() -> list[Path]:
    files = [p for pkg in (*PACKAGES, *SCRIPT_DIRS) for p in sorted((ROOT / pkg).rglob("*.py"))]
    return files + sorted((ROOT / "docs").glob("*.py"))


def rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


@dataclass(frozen=True)
class Function:
    key: str  # path::Qualified.name
    line: int
    lines: int
    params: int


def functions(path: Path) -> Iterator[Function]:
    """Every function and method of ``path``, nested ones included, named by their qualified name."""

    def walk(node: ast.AST, prefix: str) -> Iterator[Function]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                yield Function(f"{rel(path)}::{name}", child.lineno, child.end_lineno - child.lineno + 1, params(child))
                yield from walk(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text(encoding="utf-8")), "")


def params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    first = (a.posonlyargs + a.args)[:1]
    return n - (1 if first and first[0].arg in ("self", "cls") else 0)


def offences() -> dict[str, str]:
    """``path::name`` -> what is wrong with it, for every function over the limits."""
    out = {}
    for path in source_files():
        for fn in functions(path):
            if fn.lines > MAX_LINES and fn.key not in LONG_ALLOWED:
                out[fn.key] = f"{fn.lines} lines (line {fn.line}; at most {MAX_LINES})"
            if fn.params > MAX_PARAMS:
                out[fn.key] = f"{fn.params} parameters (line {fn.line}; at most {MAX_PARAMS})"
    return out


def test_no_function_is_too_long_or_takes_too_many_parameters() -> None:
    found = offences()
    assert not found, "split these functions (or pass one object instead of many values):\n" + "\n".join(
        f"  {key}: {why}" for key, why in sorted(found.items())
    )


def test_the_allowed_long_functions_exist_and_say_why() -> None:
    lines = {fn.key: fn.lines for path in source_files() for fn in functions(path)}
    for key, reason in LONG_ALLOWED.items():
        assert lines.get(key, 0) > MAX_LINES, f"{key} is no longer long (or gone): drop it from LONG_ALLOWED"
        assert reason.strip() and "\n" not in reason


# ---- the import graph ------------------------------------------------------------------------------------------
def module_name(path: Path) -> str:
    """``model_serving/app.py`` -> ``model_serving.app``; a package's ``__init__`` is the package; a script folder's
    file is its bare name (that is how its neighbours import it)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] in SCRIPT_DIRS or parts[0] == "docs":
        return parts[-1]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass(frozen=True)
class Edge:
    target: str
    where: str  # path:line of the import statement


def imports(path: Path, name: str, modules: set[str], root: Path = ROOT) -> Iterator[Edge]:
    """The project modules ``path`` (module ``name``) imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{rel(path, root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from (Edge(m, where) for m in _with_parents(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield from (Edge(m, where) for m in _with_parents(base, modules))
            for alias in node.names:  # from package import submodule
                if f"{base}.{alias.name}" in modules:
                    yield Edge(f"{base}.{alias.name}", where)
        elif _imports_by_name(node):  # importlib.import_module("a.b"): an import all the same
            yield from (Edge(m, where) for m in _with_parents(node.args[0].value, modules))


def _imports_by_name(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def _with_parents(dotted: str, modules: set[str]) -> list[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``: those of them that are project modules."""
    parts = dotted.split(".")
    return [m for m in (".".join(parts[: i + 1]) for i in range(len(parts))) if m in modules]


def import_graph(paths: dict[str, Path] | None = None, root: Path = ROOT) -> dict[str, dict[str, str]]:
    """module -> {imported module: where the first such import is}, over ``paths`` (module -> file; default: the
    project's)."""
    paths = paths if paths is not None else {module_name(p): p for p in source_files()}
    modules = set(paths)
    graph: dict[str, dict[str, str]] = {m: {} for m in modules}
    for name, path in paths.items():
        for edge in imports(path, name, modules, root):
            if edge.target != name:
                graph[name].setdefault(edge.target, edge.where)
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth: the longest import chain, a few dozen at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def a_circle(graph: dict[str, dict[str, str]], component: list[str]) -> str:
    """One circle through ``component``, readable: ``a -> b (a.py:3) -> a (b.py:9)``."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:  # every member reaches every other: walk until a module repeats
        here = path[-1]
        nxt = next(w for w in sorted(graph[here]) if w in members and (w == start or w not in seen))
        path.append(nxt)
        if nxt == start:
            break
        seen.add(nxt)
    steps = [f"{b} ({graph[a][b]})" for a, b in itertools.pairwise(path)]
    return " -> ".join([start, *steps])


def test_no_import_circle() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import circles (module -> imported module (where)):\n" + "\n".join(
        f"  {a_circle(graph, c)}" for c in found
    )


BY_NAME = "import importlib\nimportlib.import_module('a.x')\n"


@pytest.mark.parametrize(
    ("files", "circle"),
    [
        ({"a/__init__.py": "", "a/x.py": "def f():\n    from a import y\n", "a/y.py": "import a.x\n"}, True),
        ({"a/__init__.py": "", "a/x.py": "from . import y\n", "a/y.py": "from .x import f\n"}, True),
        ({"a/__init__.py": "", "a/x.py": "import a.y\n", "a/y.py": "import json\n"}, False),
        ({"a/__init__.py": "", "a/x.py": "import a.y", "a/y.py": BY_NAME}, True),
    ],
)
def test_the_circle_finder_sees_late_and_relative_imports(tmp_path, files, circle) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    names = (p.relative_to(tmp_path).with_suffix("").as_posix().replace("/", ".") for p in tmp_path.rglob("*.py"))
    paths = {name.removesuffix(".__init__"): tmp_path / f"{name.replace('.', '/')}.py" for name in names}
    graph = import_graph(paths, tmp_path)
    found = cycles(graph)
    assert bool(found) == circle
    if circle:
        assert a_circle(graph, found[0]).startswith("a.x -> a.y (")
