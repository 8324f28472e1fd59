"""The package's import graph (every ``import`` statement, module-level or inside a function,
read with ast) has no cycles. Importing ``plug_jax.a.b`` also runs ``plug_jax/a/__init__.py``,
so a module depends on the packages above what it imports (but not on its own parents)."""
import ast
import os

import plug_jax

PACKAGE = os.path.dirname(os.path.abspath(plug_jax.__file__))


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the plug_jax modules it imports (``from pkg import mod`` counts as mod)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                while t and t not in modules:  # plug_jax.x.y (an attribute) -> plug_jax.x
                    t = t.rpartition(".")[0]
                # importing plug_jax.a.b runs plug_jax/a/__init__.py first
                while t:
                    if t != mod and not mod.startswith(t + "."):
                        graph[mod].add(t)
                    t = t.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "plug_jax.cli" in graph["plug_jax.main"]  # module level
    assert "plug_jax.data.curriculum_registry" in graph["plug_jax.data.pipeline"]  # in a def
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_inside_plug_jax():
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"
