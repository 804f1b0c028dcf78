"""What the trainer requires of a model, checked before it trains: that it reads the data's
sequences (of the training set's length, and of the test set's where that differs), takes
the mask where the data has lengths, and returns float logits ``[batch, num_classes]``, not
probabilities. Each refusal is one ``ConfigError`` that says what the model gave and what
it must give.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import data as data_lib
from lstm_jax import linen as lnn
from lstm_jax.errors import ConfigError
from lstm_jax.training import calls as calls_lib
from lstm_jax.training import steps, tasks
from lstm_jax.training.calls import Calls


def check_model(
    model: nn.Module,
    input_shape: tuple[int, int],
    num_classes: int,
    *,
    masked: bool,
    test_shape: tuple[int, int] | None = None,
    task: tasks.Task = tasks.TASKS["classify"],
    targets_shape: tuple[int, ...] = (),
) -> Calls:
    """How to call ``model`` (``lstm_jax.training.calls``), once it is known to map ``[batch,
    *input_shape]`` to logits ``[batch, num_classes]`` in training (with its collections
    updated and its random streams given keys) and in evaluation, to read the test set's
    ``[batch, *test_shape]`` too with the same weights, and to take ``mask=`` if the data
    is ``masked``; refused before anything is written otherwise. For other tasks than
    ``classify``, the outputs are those ``task`` needs for targets ``targets_shape`` (one
    example's): logits at every step, or values of the targets' shape."""
    name = type(model).__name__
    try:
        variables = steps.init_variables(model, input_shape, abstract=True)
        calls = steps.model_calls(model, input_shape, variables)
    except Exception as e:  # the module's own error, for inputs of the data set's shape
        raise _unreadable(name, input_shape, e) from e
    if masked and not calls.takes_mask:
        raise ConfigError(
            "model",
            f"model: the data's sequences have lengths, so the model is given mask= (bool "
            f"[batch, time]), which {name}.__call__ does not take; add a mask argument "
            "(lstm_jax.linen's models and layers take it)",
        )
    reads = [(input_shape, True), (input_shape, False)]
    if test_shape is not None and tuple(test_shape) != tuple(input_shape):
        reads.append((tuple(test_shape), False))
    for shape, train in reads:
        x = data_lib.example_input(shape, 2)
        mask = jax.ShapeDtypeStruct((2, shape[0]), jnp.bool_) if masked else None
        try:
            out = jax.eval_shape(
                functools.partial(_logits, model, calls, train=train), variables, x, mask
            )
        except Exception as e:
            if shape == input_shape:
                raise _unreadable(name, shape, e) from e
            raise ConfigError(
                "model",
                f"model: {name} reads the training set's [batch, {input_shape[0]}, "
                f"{input_shape[1]}] but not the test set's [batch, {shape[0]}, {shape[1]}] "
                "with the same weights (they depend on the sequence length): give test "
                f"sequences of {input_shape[0]} steps, or a model that reads any length. "
                f"{type(e).__name__}: {str(e)[:300]}",
            ) from e
        if task.name == "classify":
            check_logits(model, out, num_classes)
        else:
            per_step = shape[:1] + tuple(targets_shape[1:]) if task.per_step else targets_shape
            check_outputs_shape(model, out, task, per_step, num_classes)
    return calls


def _logits(model, calls, variables, x, mask, *, train: bool):
    rngs = calls_lib.eval_rngs(0)
    return calls_lib.apply(model.apply, calls, variables, x, train=train, rngs=rngs, mask=mask)[0]


def _unreadable(name: str, shape, e: Exception) -> ConfigError:
    return ConfigError(
        "model",
        f"model: {name} cannot read inputs [batch, {', '.join(map(str, shape))}]: "
        f"{type(e).__name__}: {str(e)[:300]}",
    )


def check_outputs_shape(model, out, task: tasks.Task, targets_shape, num_classes: int) -> None:
    """Refuses outputs (a ``jax.ShapeDtypeStruct`` for 2 examples) other than float ones of
    the shape ``task`` needs (``tasks.output_shape``; for values, also with a trailing 1)."""
    want = (2, *tasks.output_shape(task, tuple(targets_shape), num_classes))
    shape = out.shape if isinstance(out, jax.ShapeDtypeStruct) else None
    fits = shape == want or (not task.classes and shape == (*want, 1))
    if not fits or not jnp.issubdtype(out.dtype, jnp.floating):
        got = f"{out.dtype} {list(shape)}" if shape is not None else type(out).__name__
        what = "logits" if task.classes else "values"
        raise ConfigError(
            "model",
            f"model: task {task.name} needs float {what} [batch, "
            f"{', '.join(map(str, want[1:]))}] for targets [batch, "
            f"{', '.join(map(str, targets_shape)) or ''}]; {type(model).__name__} gives {got}",
        )


def check_logits(model: nn.Module, out, num_classes: int) -> None:
    """Refuses an output (a ``jax.ShapeDtypeStruct``) other than float ``[2, num_classes]``,
    and a final ``Dense`` of lstm_jax's with an activation."""
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (2, num_classes):
        shape = list(out.shape) if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        raise ConfigError(
            "model",
            f"model must map [batch, time, features] to logits [batch, {num_classes}] (the "
            f"data set's classes); {type(model).__name__} gives {shape}",
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ConfigError(
            "model",
            f"model must return float logits; {type(model).__name__} gives {out.dtype} "
            f"[batch, {num_classes}] (an argmax, or a cast, has no gradient to train on)",
        )
    dense = _final_dense(model)
    if dense is not None and dense.activation not in (None, "linear"):
        raise ConfigError(
            "model",
            f"model: its last layer, Dense(activation={dense.activation!r}), must return "
            "logits (the loss is softmax cross-entropy on logits, as Keras's "
            "from_logits=True); use Dense(..., activation=None)",
        )


def _final_dense(model: nn.Module) -> lnn.Dense | None:
    """The ``lstm_jax.linen.Dense`` that ends ``model`` (a ``Classifier`` or
    ``LanguageModel``, or a ``Sequential`` ending in one), whose activation says whether it
    returns logits."""
    if isinstance(model, lnn.Classifier | lnn.LanguageModel):
        return model.layers()[-1]
    last = model.layers[-1] if isinstance(model, lnn.Sequential) and model.layers else None
    return last if isinstance(last, lnn.Dense) else None


PROBE = 16  # training examples the outputs are looked at on


def check_outputs(
    model: nn.Module,
    calls: Calls,
    variables: dict,
    train: data_lib.Split,
    sequence: str,
    task: tasks.Task = tasks.TASKS["classify"],
) -> None:
    """Refuses a model whose outputs, with its initial ``variables``, on the first ``PROBE``
    training examples, are probabilities (every row in [0, 1] and summing to 1: a softmax
    of its own), which the loss would take as logits and train poorly on. A model ending in
    lstm_jax's ``Dense`` (``check_logits`` has checked its activation), or one whose task
    regresses values, is not run."""
    if _final_dense(model) is not None or not task.classes:
        return
    part = train.head(PROBE)
    x = data_lib.to_sequences(np.asarray(part.images), sequence)
    mask = None
    if part.lengths is not None:
        mask = calls_lib.lengths_mask(part.lengths, x.shape[1])
    out = np.asarray(
        jax.jit(functools.partial(_logits, model, calls, train=False))(variables, x, mask)
    )
    rows = np.abs(out.sum(axis=-1) - 1) < 1e-4
    if ((out >= 0) & (out <= 1)).all() and rows.all():
        raise ConfigError(
            "model",
            f"model: {type(model).__name__} returns probabilities (each row in [0, 1], "
            "summing to 1: a softmax of its own), but the loss is softmax cross-entropy on "
            "logits (Keras's from_logits=True), and a softmax's output trains poorly as "
            "logits: return the values before the softmax",
        )
