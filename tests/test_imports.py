"""The package's import graph has no cycle (every import counted, those inside functions too), so
any module imports on its own in a fresh interpreter, in any order."""

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "glm_jax")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                out[_module_name(os.path.join(root, f))] = os.path.join(root, f)
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the glm_jax modules it imports}. `from pkg import name` counts as importing the
    submodule pkg.name when there is one, else pkg itself."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        deps = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    deps.add(sub if sub in modules else base)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "glm_jax.model.experts" in graph["glm_jax.model.moe"] and len(graph) > 40  # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("order", [("glm_jax.model.expert_parallel", "glm_jax.model.moe"),
                                   ("glm_jax.model.moe", "glm_jax.model.expert_parallel")])
def test_the_moe_modules_import_in_either_order(order):
    code = "; ".join(f"import {m}" for m in order)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
