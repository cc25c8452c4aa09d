"""The library's import structure: layers point one way.

An ``ast`` scan of every module of ``hardctl/`` (imports at module level and inside functions alike, since
a lazy import is still a dependency) checks that

* the library never imports the CLI (``hardctl.cli``) nor the built-in plugins (``hardctl_builtins``):
  built-ins reach the library only through the entry points, like any third-party plugin;
* the import graph has no cycles;
* no module uses another module's private (``_name``) names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hardctl"


def module_name(path: Path) -> str:
    parts = ["hardctl", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every import of ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = {id(n) for block in ast.walk(tree) if is_type_checking_block(block) for n in ast.walk(block)}
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [a.name for a in node.names], node.lineno))
    return found


def internal_target(module: str, names: list[str]) -> list[str]:
    """The hardctl modules an import statement depends on (``from pkg import submodule`` counts as the submodule)."""
    submodules = [f"{module}.{name}" for name in names if f"{module}.{name}" in MODULES]
    if module in MODULES and len(submodules) < len(names) or not names:
        submodules.append(module)
    return [m for m in submodules if m in MODULES]


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in imports(path):
            edges[name].update(t for t in internal_target(module, names) if t != name)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_scan_sees_the_library():
    assert {"hardctl.distill.trainer", "hardctl.models.specs", "hardctl.cli", "hardctl.device"} <= set(MODULES)
    edges = graph()
    assert "hardctl.distill.hard" in edges["hardctl.distill.trainer"]  # imports are found, relative ones too
    assert "hardctl.models.factory" in edges["hardctl.models.specs"]


# hardctl.__main__ is `python -m hardctl`: the command line's own entry point, like hardctl.cli
@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("hardctl.cli") and n != "hardctl.__main__"))
def test_the_library_never_imports_the_cli_or_the_builtin_plugins(name):
    bad = [(m, line) for m, _, line in imports(MODULES[name])
           if m == "hardctl.cli" or m.startswith(("hardctl.cli.", "hardctl_builtins"))]
    assert not bad, f"{name} imports {bad}"


def test_the_import_graph_has_no_cycles():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_a_cycle_is_found_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def private_uses(path: Path) -> list[str]:
    """``from hardctl.x import _name`` and ``x._name`` on an imported hardctl module."""
    tree = ast.parse(path.read_text(), str(path))
    modules = {}  # local name -> hardctl module
    uses = []
    for module, names, line in imports(path):
        if not module.startswith("hardctl"):
            continue
        uses += [f"line {line}: from {module} import {n}" for n in names
                 if n.startswith("_") and not n.startswith("__") and f"{module}.{n}" not in MODULES]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hardctl"):
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hardctl"):
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            uses.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return uses


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(name):
    assert not private_uses(MODULES[name]), f"{name}: {private_uses(MODULES[name])}"
