"""The package's modules import one another without a circle.

Every import counts, the ones inside functions too: a lazy import that closes a circle still ties
the modules into one knot that can only be understood, moved or tested together. The graph is read
from the source with ``ast`` (nothing is imported); an import of a package's module counts as an
arrow to that module, an import of a name a package's ``__init__`` defines as an arrow to the package.
"""
import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "cnnctc"


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph():
    """{module: {imported module: [line numbers]}} for every module of the package."""
    files = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}

    def known(name):
        """``name`` or its longest prefix that is a module of the package; None outside it."""
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        arrows = graph.setdefault(module, {})
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:   # a module of the package, else a name its module defines
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in files else known(base))
            for target in targets:
                if target is not None and target != module and node.lineno not in arrows.get(target, ()):
                    arrows.setdefault(target, []).append(node.lineno)
    return graph, files


def find_cycle(graph, within=None):
    """One circle of imports as [a, b, ..., a], or None (a depth-first search for a back edge);
    ``within``: only among these modules."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if within is not None and target not in within:
                continue
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(within if within is not None else graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def knots(graph):
    """The sets of two modules or more that all reach one another (strongly connected components)."""
    reaches = {}
    for module in graph:
        seen, todo = set(), [module]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        reaches[module] = seen
    found = []
    for module in sorted(graph):
        knot = {other for other in reaches[module] if module in reaches.get(other, ())}
        if len(knot) > 1 and knot not in found:
            found.append(knot)
    return found


def test_no_module_of_the_package_imports_itself_in_a_circle():
    graph, files = import_graph()
    assert "cnnctc.lineage" in graph and len(graph) > 30, sorted(graph)   # the package was read
    report = []
    for knot in knots(graph):
        cycle = find_cycle(graph, knot)
        report.append(f"{len(knot)} modules import one another: {', '.join(sorted(knot))}; one circle:")
        report += [f"  {a} -> {b} ({files[a].relative_to(ROOT)}, line {', '.join(map(str, graph[a][b]))})"
                   for a, b in zip(cycle, cycle[1:])]
    if report:
        pytest.fail("the package's imports run in a circle:\n" + "\n".join(report), pytrace=False)


def test_the_graph_reader_sees_lazy_and_relative_imports():
    graph, _ = import_graph()
    # `from .registry import list_models` inside a function of cnnctc/lineage.py
    assert "cnnctc.registry" in graph["cnnctc.lineage"]
    # `from .. import render` inside a function of cnnctc/synth/writer.py: the module, not the package
    assert "cnnctc.render" in graph["cnnctc.synth.writer"]
    # `from ..data import LabelFilter` names what the package's __init__ hands on
    assert "cnnctc.data" in graph["cnnctc.training.plan"]
    assert find_cycle({"a": {"b": [1]}, "b": {"c": [1]}, "c": {"a": [1]}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": [1]}, "b": {}, "c": {"a": [1], "b": [1]}}) is None
    assert knots({"a": {"b": [1]}, "b": {"a": [1]}, "c": {"a": [1]}}) == [{"a", "b"}]


def import_path(graph, start, goal):
    """The shortest chain of imports [start, ..., goal] by which ``start`` reaches ``goal``, or None."""
    came_from, todo = {start: None}, [start]
    while todo:
        module = todo.pop(0)
        if module == goal:
            chain = []
            while module is not None:
                chain.append(module)
                module = came_from[module]
            return chain[::-1]
        for target in sorted(graph.get(module, ())):
            if target not in came_from:
                came_from[target] = module
                todo.append(target)
    return None


def test_lineage_is_data_and_checks_below_every_reader_and_writer_of_model_files():
    # checkpoint and export write a lineage and the runners read one: lineage.py sits below them all,
    # not even lazily or through another module (what `info` opens and prints is cnnctc/model_info.py)
    graph, files = import_graph()
    report = []
    for above in ("cnnctc.onnx_runtime", "cnnctc.export", "cnnctc.checkpoint", "cnnctc.loader"):
        assert above in graph, above   # a module renamed away would make this test pass for nothing
        chain = import_path(graph, "cnnctc.lineage", above)
        if chain:
            report.append(" -> ".join(f"{a} ({files[a].relative_to(ROOT)}, line {', '.join(map(str, graph[a][b]))})"
                                      for a, b in zip(chain, chain[1:])) + f" -> {above}")
    if report:
        pytest.fail("cnnctc.lineage imports what sits above it:\n" + "\n".join(report), pytrace=False)
    assert import_path({"a": {"b": [1]}, "b": {"c": [1]}}, "a", "c") == ["a", "b", "c"]
    assert import_path({"a": {"b": [1]}, "c": {"a": [1]}}, "a", "c") is None
