"""Parameter accounting: closed forms, counts of parameter trees, a Keras-style summary.

The lesson's question, "how many parameters does an LSTM have?", has the answer
``4 * (d*u + u*u + u)``: four gate blocks, each with an input kernel ``[d, u]``, a recurrent
kernel ``[u, u]`` and a bias ``[u]``. It does not depend on the number of time steps, since
the same weights are applied at every step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import linen as lnn
from lstm_jax.cells import check_sizes

__all__ = [
    "lstm_param_count",
    "gru_param_count",
    "simple_rnn_param_count",
    "is_nnx_module",
    "count_params",
    "describe",
    "summary",
]


def lstm_param_count(input_dim: int, units: int) -> int:
    """``4 * (d*u + u*u + u)``: 480 for LSTM(10) on 1 feature, 15,800 for LSTM(50) on 28."""
    input_dim, units = check_sizes(input_dim, units)
    return 4 * (input_dim * units + units * units + units)


def gru_param_count(input_dim: int, units: int) -> int:
    """``3 * (d*u + u*u + 2u)``: Keras's GRU (``reset_after=True``) has two biases per gate."""
    input_dim, units = check_sizes(input_dim, units)
    return 3 * (input_dim * units + units * units + 2 * units)


def simple_rnn_param_count(input_dim: int, units: int) -> int:
    """``d*u + u*u + u``."""
    input_dim, units = check_sizes(input_dim, units)
    return input_dim * units + units * units + units


def is_nnx_module(obj: Any) -> bool:
    """Whether ``obj`` is a Flax NNX module, without importing ``flax.nnx`` (nothing can be
    one before it is imported)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ``jax.ShapeDtypeStruct``s, or in the
    parameters (``nnx.Param``) of a Flax NNX module."""
    if is_nnx_module(tree):
        from flax import nnx

        tree = nnx.state(tree, nnx.Param)
    return int(sum(np.prod(np.shape(leaf), dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def _nbytes(tree: Any) -> int:
    return int(
        sum(
            np.prod(leaf.shape, dtype=np.int64) * jnp.dtype(leaf.dtype).itemsize
            for leaf in jax.tree.leaves(tree)
        )
    )


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError  # unreachable


def _shape_str(out: Any, batch_is_none: bool) -> str:
    shapes = [tuple(leaf.shape) for leaf in jax.tree.leaves(out)]
    texts = [
        "("
        + ", ".join(["None" if (batch_is_none and k == 0) else str(d) for k, d in enumerate(s)])
        + ("," if len(s) == 1 else "")
        + ")"
        for s in shapes
    ]
    return texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"


def _layer_rows(model: nn.Module, x: jax.ShapeDtypeStruct, batch_is_none: bool):
    """``(rows, variables)``: one ``(name (type), output shape, parameters)`` row for each
    layer ``model`` calls directly, and its variables' shapes, traced without allocating."""
    calls: list[tuple[tuple[str, ...], str, Any]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and len(context.module.path) <= 1:
            calls.append((context.module.path, type(context.module).__name__, out))
        return out

    def init(key, x):
        with nn.intercept_methods(record):
            return model.init(key, x)

    variables = jax.eval_shape(init, jax.random.key(0), x)
    layers = [c for c in calls if len(c[0]) == 1] or [c for c in calls if not c[0]]
    rows = []
    for path, type_name, out in layers:
        name = path[0] if path else type_name
        sub_vars = [v.get(path[0], {}) for v in variables.values()] if path else variables
        rows.append(
            (f"{name} ({type_name})", _shape_str(out, batch_is_none), count_params(sub_vars))
        )
    return rows, variables


def _table(title: str, rows, variables) -> list[str]:
    """Keras's summary table of ``rows``, with the totals of ``variables``."""
    trainable = variables.get("params", {})
    others = {k: v for k, v in variables.items() if k != "params"}
    headers = ("Layer (type)", "Output Shape", "Param #")
    body = [(a, b, f"{c:,}") for a, b, c in rows]
    widths = [max(len(r[k]) for r in [headers, *body]) + 2 for k in range(3)]
    widths[0] = max(widths[0], 30)
    widths[1] = max(widths[1], 24)
    widths[2] = max(widths[2], 12)
    line = " " + "─" * (sum(widths) - 1)

    def fmt(r):
        return " " + r[0].ljust(widths[0]) + r[1].ljust(widths[1]) + r[2].rjust(widths[2] - 2)

    total = count_params(variables)
    n_train = count_params(trainable)
    lines = [f'Model: "{title}"', line, fmt(headers), line.replace("─", "═")]
    lines += [fmt(r) for r in body]
    return lines + [
        line.replace("─", "═"),
        f" Total params: {total:,} ({_human_bytes(_nbytes(variables))})",
        f" Trainable params: {n_train:,} ({_human_bytes(_nbytes(trainable))})",
        f" Non-trainable params: {total - n_train:,} ({_human_bytes(_nbytes(others))})",
    ]


def _traced_shape(input_shape) -> tuple[bool, tuple[int, ...]]:
    """Whether ``input_shape``'s batch is ``None``, and the shape traced (batch 1 for it)."""
    input_shape = tuple(input_shape)
    if any(d is not None and (not isinstance(d, int) or d <= 0) for d in input_shape):
        raise ValueError(
            f"input_shape must hold positive ints (or None for the batch); got {input_shape}"
        )
    if any(d is None for d in input_shape[1:]):
        raise ValueError(f"only the batch dimension may be None; got {input_shape}")
    batch_is_none = input_shape[0] is None if input_shape else False
    return batch_is_none, tuple(1 if d is None else d for d in input_shape)


def describe(model) -> str:
    """The model in Keras's words, e.g. ``LSTM(50) -> Dense(10)``, as the trainer's setup
    line, ``metrics.json`` and ``train.py --evaluate`` name it (``summary`` gives its
    table); an ``lstm_jax.nnx`` model as its linen twin; other modules by class name.

    >>> from lstm_jax.linen import Classifier
    >>> describe(Classifier(units=(64, 32), bidirectional=True))
    'Bidirectional(LSTM(64)) -> Bidirectional(LSTM(32)) -> Dense(10)'
    """
    if is_nnx_module(model):
        from lstm_jax import nnx as lnnx

        model = lnnx.to_linen(model)
    if isinstance(model, lnn.Classifier | lnn.Sequential):
        layers = model.layers() if isinstance(model, lnn.Classifier) else model.layers
        return " -> ".join(map(describe, layers))
    if isinstance(model, lnn.Bidirectional):
        return f"Bidirectional({describe(model.layer)})"
    if isinstance(model, lnn.RecurrentBase):
        return f"{model.cell.layer}({model.units})"
    if isinstance(model, lnn.Dense | nn.Dense):
        return f"Dense({model.units if isinstance(model, lnn.Dense) else model.features})"
    return type(model).__name__


def summary(
    model: nn.Module,
    input_shape: Sequence[int | None],
    *,
    dtype: Any = jnp.float32,
    print_fn: Callable[[str], None] = print,
) -> int:
    """Prints a Keras-style table of a Flax model's layers; returns the total parameters.

    Each row is one layer the model calls directly: its name and type, its output shape and
    its parameter count, followed by the totals and their size in bytes. Nothing is
    allocated: the model is traced with ``jax.eval_shape``.

    Args:
      model: a Flax linen module, e.g. ``lstm_jax.linen.Classifier()`` or an ``nn.Sequential``,
        or an ``lstm_jax.nnx`` model.
      input_shape: ``[batch, time, features]``; ``None`` for the batch prints as ``None``,
        as Keras does.
      dtype: the dtype of the traced input.
      print_fn: where the lines go.

    >>> from lstm_jax.linen import LSTM
    >>> total = summary(LSTM(10), (None, 5, 1))  # doctest: +ELLIPSIS
    Model: "LSTM"
    ...
     Total params: 480 (1.88 KB)
    ...
    """
    if is_nnx_module(model):  # its linen twin: the same layers and counts
        from lstm_jax import nnx as lnnx

        model = lnnx.to_linen(model)
    batch_is_none, concrete = _traced_shape(input_shape)
    rows, variables = _layer_rows(model, jax.ShapeDtypeStruct(concrete, dtype), batch_is_none)
    lines = _table(type(model).__name__, rows, variables)
    for text in lines:
        print_fn(text)
    return count_params(variables)
