"""The layout docs/architecture.md describes: argparse only in the command layer, module-level imports only
(outside optional dependencies), no import cycles between seglab's modules, and docs that code cites exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "seglab"


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def imported(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """Return (module name, node) of every import in `tree`, `from x import y` giving x and x.y."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, node)] + [(f"{node.module}.{alias.name}", node) for alias in node.names]
    return out


def test_argparse_only_in_the_command_layer():
    offenders = [
        name
        for name, tree in modules().items()
        if not name.startswith("seglab.cli") and any(m == "argparse" for m, _ in imported(tree))
    ]
    assert offenders == []


def test_imports_sit_at_module_level():
    """Optional dependencies go through `seglab.plugins.optional_import`, so no import statement hides in a function."""
    hidden = []
    for name, tree in modules().items():
        top = {id(node) for node in tree.body}
        hidden += [f"{name}: {module} (line {node.lineno})" for module, node in imported(tree) if id(node) not in top]
    assert hidden == []


def test_no_import_cycles_between_modules():
    trees = modules()
    packages = {name for name in trees if (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").is_file()}
    graph = {
        name: {m for m, _ in imported(tree) if m in trees and m != name and m not in packages}
        for name, tree in trees.items()
    }
    cycles, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        done.add(name)
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])

    for name in sorted(graph):
        if name not in packages:
            visit(name, [])
    assert cycles == []


def test_cited_docs_exist():
    cited = {doc for path in PACKAGE.rglob("*.py") for doc in re.findall(r"\bdocs/[\w./-]+\.md\b", path.read_text())}
    assert cited and all((ROOT / doc).is_file() for doc in cited), cited
