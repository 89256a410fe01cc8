"""The house rules, read from the source: imports point down the floors of
:mod:`molequi.layers` and no module imports itself through others (a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from molequi.layers import FLOORS, GROUND, floor_of

PACKAGE = Path(__file__).resolve().parents[1] / "molequi"
MAX_LINES = 500
"""A module longer than this says why at its top (a line ``# long: REASON``)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every ``molequi`` module (among ``modules``) that ``path`` imports, at module level or
    inside functions: ``from package import module`` is an arrow to the module, ``from module
    import name`` (or a name re-exported by a package) an arrow to the module or package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "molequi" or t.startswith("molequi."))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the molequi modules it imports (names that are not modules, such as a function
    imported from a module, are resolved to that module)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for target in imports_of(path, set(paths)):
            while target not in paths and "." in target:
                target = target.rpartition(".")[0]
            if target in paths and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Arrows that point up a floor, or sideways between two rooms of one floor."""
    bad = []
    for source, targets in graph.items():
        for target in targets:
            a, b = room(source), room(target)
            if a == b or (a in GROUND and b in GROUND):
                continue
            if floor_of(b) >= floor_of(a):
                bad.append(f"{source} -> {target} ({a} on floor {floor_of(a)}, {b} on floor {floor_of(b)})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_room_is_on_a_floor():
    rooms = {room(name) for name in import_graph()}
    named = {r for floor in FLOORS for r in floor}
    assert rooms <= named, f"rooms on no floor of molequi.layers: {sorted(rooms - named)}"


def test_imports_point_down():
    assert layering_violations(import_graph()) == []


def test_no_import_cycles():
    # packages import their own modules to re-export them; an arrow from a module back to its
    # own package's __init__ would close a cycle, so the graph keeps only arrows to modules
    assert cycles(import_graph()) == []


def test_the_checks_can_fail():
    graph = {"molequi.nn.forces": {"molequi.models.baseline"}, "molequi.models.baseline": {"molequi.nn.forces"},
             "molequi.md.engine": {"molequi.training.trainer"}, "molequi.training.trainer": set()}
    assert len(layering_violations(graph)) == 2  # nn -> models points up; md -> training sideways
    assert cycles(graph) == [["molequi.models.baseline", "molequi.nn.forces"]]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_long_modules_say_why(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) > MAX_LINES:
        assert any(line.startswith("# long: ") for line in lines[:40]), (
            f"{path.name} has {len(lines)} lines: split it, or say why at its top ('# long: REASON')"
        )
