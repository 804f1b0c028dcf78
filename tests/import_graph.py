"""The package's import graph, by layer: ``python -m tests.import_graph`` prints it, and
``tests/test_layers.py`` fails on an import that runs upwards or a cycle.

Every ``import`` of an ``lstm_jax`` module counts, at module level or inside a function
(a deferred import is still a dependency). The layers, lowest first; a module may import
its own layer's modules and those below:
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "lstm_jax"

LAYERS = (
    ("base", ("lstm_jax._jax_compat", "lstm_jax._version", "lstm_jax._vjp", "lstm_jax.errors")),
    (
        "model",
        tuple(
            f"lstm_jax.{m}"
            for m in (
                "cells",
                "lstm_scan",
                "gru_scan",
                "lstm_cudnn",
                "lstm_cpu",
                "dropout",
                "recurrent",
                "forward",
                "linen",
                "nn",
                "nnx",
                "params",
                "keras_io",
                "sampling",
            )
        ),
    ),
    ("process", ("lstm_jax._process",)),
    ("data", ("lstm_jax.data",)),
    ("training", ("lstm_jax.training",)),
    ("package", ("lstm_jax",)),
)


def modules() -> dict[str, pathlib.Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer(module: str) -> int:
    """The index in ``LAYERS`` of ``module``'s layer: the one that names it or its
    package most closely."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise ValueError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return rank


def imports(name: str, path: pathlib.Path, known: dict) -> set[str]:
    """The package's modules that ``name`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lstm_jax"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "lstm_jax":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    """Each import of a module in a higher layer, as ``a -> b``."""
    return [
        f"{a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})"
        for a in sorted(g)
        for b in sorted(g[a])
        if layer(b) > layer(a)
    ]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles, each as the path that closes it."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def main() -> None:
    g = graph()
    for i, (title, _) in enumerate(LAYERS):
        print(f"{title}:")
        for a in sorted(m for m in g if layer(m) == i):
            print(f"  {a} -> {', '.join(sorted(g[a])) or '(nothing of lstm_jax)'}")
    problems = upward(g) + [" -> ".join(c) for c in cycles(g)]
    if problems:
        print("\n".join(["upward imports or cycles:", *problems]))
    else:
        print("no upward import, no cycle")


if __name__ == "__main__":
    main()
