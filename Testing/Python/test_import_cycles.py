"""No import cycles inside our packages, counting imports inside functions too (a lazy import that closes a
cycle still ties two modules together: neither can be understood, tested or moved without the other). Imports
under ``if TYPE_CHECKING:`` are for type checkers only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
                targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


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


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package):
    cycle = find_cycle(module_graph(package, PACKAGES[package]))
    assert not cycle, "import cycle: " + " -> ".join(cycle) + " (move the shared code into a module both can import)"
