"""The import direction of docs/ARCHITECTURE.md, checked on every module of src/lmgym (imports inside
functions included): a module imports only from its own layer or the layers below it, and no modules import
each other in a circle (a package's own __init__ aside). And no algorithm sits more than two classes below
`Trainer`."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module's layer is its first name below lmgym (a package or a top-level module).
LAYERS: list[set[str]] = [
    {"errors", "config", "distributed", "host_memory", "environment", "checkpoint", "tracking", "trackers"},
    {"models"},
    {"metrics"},
    {"rewards"},
    {"data"},
    {"rollout"},
    {"algos", "preflight"},
    {"api", "envs", "publish"},
    {"bench", "label"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "lmgym").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The lmgym modules a file imports, at any depth of its code (`from a.b import c` is a.b.c when c is a
    module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmgym"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lmgym")}
    return {name for name in found if name in known}


def layer(module: str) -> str:
    return module.split(".")[1]


def is_package(module: str, known: dict[str, Path]) -> bool:
    return known[module].name == "__init__.py"


def graph() -> dict[str, set[str]]:
    """Module → the modules it imports; edges between a package's __init__ and its own submodules are left out
    (a package may re-export its modules, and they may import their package)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for target in imports(path, known) - {name}:
            related = target.startswith(name + ".") or name.startswith(target + ".")
            if related and (is_package(name, known) or is_package(target, known)):
                continue
            targets.add(target)
        edges[name] = targets
    return edges


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({layer(m) for m in modules() if m != "lmgym"} - set(RANK))
    assert not unplaced, f"add these to LAYERS (and docs/ARCHITECTURE.md): {unplaced}"


def test_imports_follow_the_layers() -> None:
    against = [
        f"{source} ({layer(source)}) imports {target} ({layer(target)})"
        for source, targets in graph().items()
        if source != "lmgym"
        for target in targets
        if target != "lmgym" and RANK[layer(target)] > RANK[layer(source)]
    ]
    assert not against, "imports against the layer direction:\n" + "\n".join(sorted(against))


def test_no_import_cycles() -> None:
    edges = graph()
    cycles = [component for component in strongly_connected(edges) if len(component) > 1]
    assert not cycles, f"modules that import each other in a circle: {cycles}"


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_the_checker_catches_a_cycle_and_an_upward_import() -> None:
    """The checks themselves can fail: a made-up cycle is found."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"], ["d"]]


@pytest.mark.parametrize("algo", ["ppo", "nlpo", "a2c", "trpo", "reinforce", "rloo", "grpo", "sft", "dpo", "ilql"])
def test_algorithms_sit_at_most_two_levels_below_trainer(algo: str) -> None:
    from lmgym.algos import get_trainer
    from lmgym.algos.trainer import Trainer

    mro = inspect.getmro(get_trainer(algo))
    assert mro.index(Trainer) <= 2, [c.__name__ for c in mro]
