"""The import graph of `vrl` is layered and acyclic (docs/ARCHITECTURE.md, "Layers").

Each module belongs to a layer; it may import its own layer and the layers below, never one
above, not even inside a function (what a lower layer needs from above is passed in). Imports
inside functions are kept for optional heavy dependencies only, each with a comment saying why.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "vrl"

# Lowest first. A module's layer is that of the longest prefix listed.
LAYERS = (
    (
        "vrl",
        "vrl.registry",
        "vrl.config",
        "vrl.durations",
        "vrl.checksums",
        "vrl.workdir_lock",
        "vrl.preemption",
        "vrl.metrics",
        "vrl.sharding",
        "vrl.flag_errors",
        "vrl.storage",
    ),
    ("vrl.models", "vrl.data"),
    ("vrl.objectives",),
    ("vrl.state", "vrl.optim", "vrl.flops"),
    ("vrl.checkpoint", "vrl.resume", "vrl.weights", "vrl.checkpointer", "vrl.setup"),
    ("vrl.train",),
    ("vrl.probe", "vrl.evaluators"),
    (
        "vrl.main",
        "vrl.compile",
        "vrl.api",
        "vrl.convert",
        "vrl.probe.__main__",
        "vrl.config.__main__",
        "vrl.data.show",
    ),
)


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(name: str) -> int:
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{name} is in no layer: add it to LAYERS"
    return found


def imports(name: str) -> list[tuple[str, int, bool, str]]:
    """(imported vrl module, line, inside a function, source line) for each import of `name`."""
    path = MODULES[name]
    source = path.read_text()
    lines = source.splitlines()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                    for a in child.names
                ]
            for target in targets:
                found.append((target, child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def vrl_graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        graph[name] = {t for t, *_ in imports(name) if t in MODULES and t != name}
    return graph


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_higher_layer(name):
    own = layer(name)
    higher = [
        f"line {line}: {target} (layer {layer(target)} > {own})"
        for target, line, _, _ in imports(name)
        if target in MODULES and layer(target) > own
    ]
    assert not higher, f"{name} (layer {own}) imports upwards: {higher}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (its nodes, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_is_acyclic():
    cycle = find_cycle(vrl_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_checks_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("vrl.train") > layer("vrl.checkpointer") > layer("vrl.objectives.base")
    assert layer("vrl.probe.__main__") > layer("vrl.probe.main") > layer("vrl.train")
    # An import inside a function is seen as one.
    inner = [(t, i) for t, _, i, _ in imports("vrl.data.show")]
    assert inner and all(t for t, _ in inner)


def test_imports_inside_functions_are_optional_dependencies_with_a_reason():
    bad = []
    for name in MODULES:
        for target, line, inner, text in imports(name):
            if not inner:
                continue
            if target == "vrl" or target.startswith("vrl."):
                bad.append(f"{name}:{line}: {target} (a vrl module: import it at the top)")
            elif not re.sub(r"noqa: *[A-Z0-9, ]+", "", text.partition("#")[2]).strip(" -"):
                bad.append(f"{name}:{line}: {target} (say why it is imported here)")
    assert not bad, "\n".join(bad)
