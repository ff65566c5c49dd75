"""The house rules on imports and layout: the web layer starts without torch, inference
without FastAPI; no import cycles; every package says what it holds; app/'s top level is
kept small on purpose (docs/architecture.md, "Packages")."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import ROOT

CHECK = textwrap.dedent("""
    import importlib, pkgutil, sys

    BLOCKED = set(sys.argv[2].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} must not be imported here")
            return None

    sys.meta_path.insert(0, Block())
    package = importlib.import_module(sys.argv[1])
    names = [sys.argv[1]] + [m.name for m in pkgutil.walk_packages(package.__path__, sys.argv[1] + ".")]
    for name in names:
        if name.endswith((".env", ".__main__")):  # run by alembic / `python -m`, not imported
            continue
        importlib.import_module(name)
    print(len(names))
""")


def run_check(package: str, blocked: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHECK, package, blocked], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip())


def test_every_app_module_imports_without_torch_diffusers_transformers():
    assert run_check("app", "torch,diffusers,transformers,accelerate") >= 15


def test_every_inference_module_imports_without_the_web_layer():
    assert run_check("inference", "fastapi,starlette,uvicorn,app,sqlalchemy") >= 7


# --- The layout: no import cycles, a docstring per package, a deliberate top level ---------

PACKAGES = ("app", "inference")
# app/'s top level: the app factory, the settings, and what every role shares. Everything
# else belongs in a package (api, cli, jobs, results, migrations).
APP_TOP_LEVEL = {"__init__", "main", "config", "runtime", "backend", "http_guard", "logs",
                 "metrics", "keys", "webhooks", "child_process"}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under app/ and inference/."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that `name` imports anywhere in its source (module level, in
    functions, in classes), each resolved to the deepest module that exists."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        for target in targets:
            module = resolve(target)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def shortest_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """start -> ... -> start, breadth first within one strongly connected component."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a cycle but no path leads back to it")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as paths a -> b -> ... -> a: the shortest one through each module
    of each strongly connected component, each cycle once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:          # Tarjan, recursive: the graph has ~100 nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    components.sort(key=min)

    cycles, seen = [], set()
    for component in components:
        for start in sorted(component):     # the shortest cycle through each member
            cycle = shortest_cycle(graph, component, start)[:-1]
            first = cycle.index(min(cycle))           # written from its first module by name
            cycle = cycle[first:] + cycle[:first + 1]
            key = tuple(cycle)
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def test_cycle_finder_reports_the_cycle_with_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"],
                                                                     ["a", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_sees_function_level_from_and_relative_imports(tmp_path):
    graph = import_graph()
    assert "app.main" in graph["app.cli.serve"]           # imported inside run()
    assert "app.jobs.sql" in graph["app.backend"]         # module level
    assert {"app.cli.db", "app.cli.serve"} <= graph["app.cli.main"]   # from app.cli import db
    source = tmp_path / "mod.py"
    source.write_text("from . import sibling\nfrom ..other import thing\n"
                      "def f():\n    import pkg.deep.leaf.attr\n")
    known = {"pkg", "pkg.sub", "pkg.sub.mod", "pkg.sub.sibling", "pkg.other", "pkg.deep.leaf"}
    assert imported_modules("pkg.sub.mod", source, known) == {
        "pkg.sub.sibling", "pkg.other", "pkg.deep.leaf"}


def test_no_import_cycle_among_app_and_inference_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (each module imports the next; imports inside " \
        "functions count too):\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_every_package_says_what_it_holds():
    missing = []
    for name, path in project_modules().items():
        if path.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not re.search(r"\w.*[.!?:](\s|$)", doc.strip() + " ") or len(doc.split()) < 4:
            missing.append(f"{name} ({path.relative_to(ROOT)})")
    assert not missing, "packages without a docstring of at least one sentence: " + \
        ", ".join(missing)


def test_app_top_level_holds_only_the_expected_modules():
    found = {p.stem for p in (ROOT / "app").glob("*.py")}
    assert found == APP_TOP_LEVEL, (
        f"app/'s top level changed (new: {sorted(found - APP_TOP_LEVEL) or 'none'}, gone: "
        f"{sorted(APP_TOP_LEVEL - found) or 'none'}). A module belongs in a package unless "
        "every role shares it: if this one does, update APP_TOP_LEVEL in "
        "tests/unit/test_boundaries.py and the Packages section of docs/architecture.md.")
