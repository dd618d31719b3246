"""The ``llmrecall`` package imports in one direction: no module reaches itself through its
imports, whether they run at import time or inside a function.

Regression: ``serve/cli.py`` imported its dataset loading from the top-level ``cli.py``,
which imports ``serve/cli.py``; ``channels/base.py`` (``Channel.load``) imported
``channels/registry.py``, which imports ``base`` and, to register the built-in kinds, the
``channels`` package that imports every channel module.
"""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted; each
    is a set of modules that import one another in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(found)


def _describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    members = set(component)
    lines = []
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            where = graph.get_import_details(importer=importer, imported=imported)
            at = ", ".join(f"line {d['line_number']}" for d in where)
            lines.append(f"    {importer} -> {imported} ({at})")
    return "\n".join(lines)


def test_the_package_has_no_import_cycles():
    # every import statement counts: module level, inside functions and under TYPE_CHECKING
    graph = grimp.build_graph("llmrecall", cache_dir=None)
    assert len(graph.modules) > 50  # the package was found and read
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(
        f"  {' <-> '.join(c)}\n{_describe(graph, c)}" for c in cycles)


def test_the_cycle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.b", "a.c", "a.d"):
        graph.add_module(module)
    graph.add_import(importer="a.b", imported="a.c")
    graph.add_import(importer="a.c", imported="a.b")
    graph.add_import(importer="a.c", imported="a.d")
    assert _cycles(graph) == [["a.b", "a.c"]]
