"""No import cycles inside our packages, counting imports inside functions too (a lazy import that closes a
cycle still ties two modules together: neither can be understood, tested or moved without the other), and the
modules a package loads by name on first use (``importlib.import_module`` with the names in its module, as the
core's ``__init__`` does for its exports). Imports under ``if TYPE_CHECKING:`` are for type checkers only and do
not count."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = {
    "training.collagan_train": ROOT / "training" / "collagan_train",
    "CollaGANImputeLib": ROOT / "CollaGANImpute" / "CollaGANImputeLib",
}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for other in node.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield node
        yield from _runtime_nodes(node)


def module_graph(package: str, folder: Path) -> Dict[str, Set[str]]:
    """module -> the modules of the same package it imports (absolute or relative, at any depth)."""
    files = {(package + "." + ".".join(p.relative_to(folder).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in folder.rglob("*.py")}
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = name.split(".")
                    base = parts[:len(parts) - node.level + (1 if is_package else 0)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                modules = [f"{stem}.{alias.name}" for alias in node.names]
                # "from . import a" loads the submodule a, not the package's own names
                targets = modules if all(m in files for m in modules) else [stem, *modules]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
        graph[name] |= _loaded_by_name(ast.parse(path.read_text(), str(path)), package, files) - {name}
    return graph


def _loaded_by_name(tree: ast.AST, package: str, files: Dict[str, Path]) -> Set[str]:
    """Modules of ``package`` a module loads with ``importlib.import_module``: in such a module every string
    constant naming a module of the package (``"pipeline"``, ``".pipeline"`` or the full name) counts as an
    import of it, since the name is what gets loaded."""
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "import_module"]
    if not calls:
        return set()
    names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    found = set()
    for text in names:
        for candidate in (text, f"{package}.{text.lstrip('.')}"):
            if candidate in files and candidate != package:
                found.add(candidate)
    return found


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (first == last), or [] when there is none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_sees_a_lazy_two_module_cycle(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import g\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import b\n")
    (tmp_path / "d.py").write_text("from .c import x\n")
    assert find_cycle(module_graph("pkg", tmp_path)) == ["pkg.a", "pkg.b", "pkg.a"]
    (tmp_path / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(module_graph("pkg", tmp_path)) == []


def test_find_cycle_sees_a_module_loaded_by_name(tmp_path):
    (tmp_path / "__init__.py").write_text(
        "import importlib\n_EXPORTS = {'g': 'b'}\n\n\ndef __getattr__(name):\n"
        "    return getattr(importlib.import_module('.' + _EXPORTS[name], __name__), name)\n")
    (tmp_path / "a.py").write_text("X = 1\n")
    (tmp_path / "b.py").write_text("def g():\n    from .c import h\n")
    (tmp_path / "c.py").write_text("import pkg\n")
    assert find_cycle(module_graph("pkg", tmp_path)) == ["pkg", "pkg.b", "pkg.c", "pkg"]
    (tmp_path / "c.py").write_text("from . import a\n")
    assert find_cycle(module_graph("pkg", tmp_path)) == []


def test_the_core_package_loads_its_exports_by_name():
    graph = module_graph("CollaGANImputeLib", PACKAGES["CollaGANImputeLib"])
    assert {"CollaGANImputeLib.pipeline", "CollaGANImputeLib.contract"} <= graph["CollaGANImputeLib"]
    assert "CollaGANImputeLib.pipeline" not in graph["CollaGANImputeLib.input_check"]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package):
    cycle = find_cycle(module_graph(package, PACKAGES[package]))
    assert not cycle, "import cycle: " + " -> ".join(cycle) + " (move the shared code into a module both can import)"
