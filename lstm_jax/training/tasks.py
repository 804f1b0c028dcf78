"""What a run learns: its targets, its loss and its metric (``TASKS``).

* ``classify``: one class per sequence (targets ``[N]`` ints), the lesson's task; logits
  ``[batch, classes]``, softmax cross-entropy, accuracy.
* ``per_step``: a class at every step (targets ``[N, T]`` ints); logits ``[batch, time,
  classes]``, cross-entropy at every valid step (padded steps, past each sequence's length,
  count for nothing), accuracy over the valid steps.
* ``next_token``: a language model: ``per_step`` whose targets are the inputs moved one step
  on; its loss is in nats per token, also reported as bits per token and perplexity.
* ``regress``: float targets per sequence ``[N]`` or per step ``[N, T]`` (or any ``[N, ...]``
  the model's outputs match); mean squared error, and mean absolute error as the metric.

Every task reduces a batch to the same three sums, ``[loss_sum, metric_sum, count]`` over its
weighted examples (or steps, or values): the jitted epoch adds them up, and ``rates`` turns
them into the task's numbers.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from lstm_jax import data as data_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: ``name``; ``metric``, the name of the metric its sums hold (``accuracy`` or
    ``mae``); ``per_step``, targets at every step ``[N, T]``; ``classes``, integer targets
    (class ids) against logits, rather than float values."""

    name: str
    metric: str
    per_step: bool
    classes: bool

    def sums(self, outputs: Array, targets: Array, weights: Array, mask: Array | None = None):
        """``[loss_sum, metric_sum, count]`` over ``weights`` (``[B]``, 0 for padding rows)
        and, for per-step targets, ``mask`` (bool ``[B, T]``, the valid steps)."""
        if self.name == "classify":
            return classify_sums(outputs, targets, weights)
        if self.classes:
            return _per_step_sums(outputs, targets, _step_weights(weights, mask, targets))
        return _regress_sums(outputs, targets, weights, mask)

    def rates(self, sums) -> dict[str, float]:
        """The task's numbers from its sums: ``loss`` and its ``metric``; ``next_token`` adds
        ``bits`` (per token) and ``perplexity``."""
        loss_sum, metric_sum, count = (float(v) for v in sums)
        loss, metric = loss_sum / max(count, 1), metric_sum / max(count, 1)
        out = {"loss": loss, self.metric: metric}
        if self.name == "next_token":
            out["bits"] = loss / math.log(2)
            out["perplexity"] = math.exp(min(loss, 700.0))
        return out


TASKS = {
    "classify": Task("classify", "accuracy", per_step=False, classes=True),
    "per_step": Task("per_step", "accuracy", per_step=True, classes=True),
    "next_token": Task("next_token", "accuracy", per_step=True, classes=True),
    "regress": Task("regress", "mae", per_step=False, classes=False),
}
assert tuple(TASKS) == data_lib.TASKS, "each task the data knows needs its loss"


def classify_sums(logits: Array, labels: Array, weights: Array) -> Array:
    """Per-example softmax cross-entropy; returns sums (loss, correct, count) over the
    weighted examples (padding has weight 0).

    Computed against one-hot labels, as Keras's ``sparse_categorical_crossentropy`` does:
    its gradient is then elementwise, where picking each row's label (``take_along_axis``)
    differentiates into a gather and a scatter, four more kernels for XLA to compile.
    """
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)  # [B, classes]
    losses = optax.softmax_cross_entropy(logits, one_hot)  # [B]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.stack([jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)])


def _step_weights(weights: Array, mask: Array | None, targets: Array) -> Array:
    """``[B, T]``: each step's weight, its row's, 0 past the row's length."""
    w = jnp.broadcast_to(weights[:, None], targets.shape[:2]).astype(jnp.float32)
    return w if mask is None else w * mask.astype(jnp.float32)


def _per_step_sums(logits: Array, labels: Array, weights: Array) -> Array:
    """Cross-entropy and correctness at every step (``logits [B, T, C]``, ``labels [B, T]``),
    summed over ``weights [B, T]``."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.stack([jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)])


def _regress_sums(outputs: Array, targets: Array, weights: Array, mask: Array | None) -> Array:
    """Squared and absolute errors, summed over every weighted value; ``outputs`` of one more
    trailing axis of size 1 than ``targets`` (``Dense(1)``'s) are read without it."""
    outputs = outputs.astype(jnp.float32)
    if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1:
        outputs = outputs[..., 0]
    w = weights.astype(jnp.float32).reshape(weights.shape + (1,) * (targets.ndim - 1))
    if mask is not None and targets.ndim >= 2 and targets.shape[1] == mask.shape[1]:
        w = w * mask.astype(jnp.float32).reshape(mask.shape + (1,) * (targets.ndim - 2))
    w = jnp.broadcast_to(w, targets.shape)
    error = outputs - targets
    return jnp.stack([jnp.sum(error**2 * w), jnp.sum(jnp.abs(error) * w), jnp.sum(w)])


def output_shape(task: Task, targets_shape: tuple[int, ...], classes: int) -> tuple[int, ...]:
    """The shape the model must output for one example whose targets are ``targets_shape``:
    ``[classes]``, ``[T, classes]`` or, regressing, the targets' shape (or it with ``1``)."""
    if task.name == "classify":
        return (classes,)
    if task.classes:
        return (*targets_shape, classes)
    return tuple(targets_shape)
