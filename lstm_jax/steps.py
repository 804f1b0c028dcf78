"""The model and its steps: the model a config describes, the optimizer, the training
state, one optimizer step, and the jitted epoch functions built from it.

* A whole epoch is one jitted call (``train_epoch``): a ``lax.scan`` over batches, with the
  training state donated, compiled once per run.
* Data parallel over every device of the mesh (``lstm_jax.sharding``), parameters and
  optimizer state replicated: each device computes the gradient of its slice of the batch
  (``jax.shard_map``), and the gradients are summed across devices. The same code serves one
  device, several, and several processes on one or many hosts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lstm_jax import _jax_compat, sharding
from lstm_jax import data as data_lib
from lstm_jax import nn as lnn
from lstm_jax.config import Config
from lstm_jax.errors import ConfigError


def make_model(config: Config, num_classes: int) -> nn.Module:
    dtype = jnp.bfloat16 if config.precision == "bfloat16" else None
    return lnn.Classifier(
        cell=config.cell,
        units=config.units,
        num_classes=num_classes,
        bidirectional=config.bidirectional,
        dtype=dtype,
    )


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Keras's defaults for each optimizer (epsilon 1e-7, RMSprop rho 0.9, AdamW decay 0.004).

    The optimizer runs on all parameters as one flat vector (``optax.flatten``; its state,
    e.g. Adam's moments, is flat too): the same elementwise update, but XLA compiles a few
    kernels for it instead of a few per parameter array, so the epoch compiles faster
    (``benchmarks/NOTES.md``).
    """
    lr = config.learning_rate
    optimizer = {
        "adam": lambda: optax.adam(lr, eps=1e-7),
        "sgd": lambda: optax.sgd(lr),
        "rmsprop": lambda: optax.rmsprop(lr, decay=0.9, eps=1e-7),
        "adamw": lambda: optax.adamw(lr, eps=1e-7, weight_decay=0.004),
    }[config.optimizer]()
    return optax.flatten(optimizer)


def create_train_state(
    config: Config, model: nn.Module, input_shape: tuple[int, int]
) -> train_state.TrainState:
    """Initialises parameters from ``config.seed`` (as Keras would) and the optimizer."""
    key = jax.random.fold_in(jax.random.key(config.seed), 0)
    # Jitted: one XLA compilation, not one per operation run eagerly (whose executables
    # stay cached, in memory). The values are the same.
    params = jax.jit(model.init)(key, jnp.zeros((1, *input_shape), jnp.float32))["params"]
    return train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=make_optimizer(config)
    )


def loss_and_metrics(logits: jax.Array, labels: jax.Array, weights: jax.Array):
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


def train_step(state, batch: dict[str, jax.Array], *, mesh: Mesh, sequence: str = "rows"):
    """One optimizer step on ``batch``; returns ``(state, sums, loss)``.

    ``batch`` holds ``image`` (``uint8 [B, H, W, C]``, read as ``sequence``), ``label``
    (``[B]``) and ``weight`` (``[B]``, 0 for padding); ``sums`` is ``[loss_sum, correct,
    count]`` over the weighted examples.

    The loss is the mean over the batch's real examples, as Keras averages a smaller
    final batch over its own examples.

    Data parallel over ``mesh``: each device computes the gradient of its own slice of
    the batch (``jax.shard_map``), and the gradients and sums are added across devices.
    The model then runs on per-device arrays, so the LSTM's backward pass keeps its
    weight-gradient sum on the device for all time steps; left to XLA's automatic
    partitioning, that sum was all-reduced at every step (``benchmarks/NOTES.md``).
    """

    def grads_and_sums(params, images, labels, weights):
        x = data_lib.to_sequences(images, sequence)  # [B, T, F]
        # Each device's own gradient (shard_map would otherwise sum each parameter's
        # gradient across devices itself, one all-reduce operand per array).
        params = jax.tree.map(lambda p: _jax_compat.pvary(p, ("data",)), params)

        def loss_sum(params):
            logits = state.apply_fn({"params": params}, x)  # [B, classes]
            sums = loss_and_metrics(logits, labels, weights)
            return sums[0], sums

        grads, sums = jax.grad(loss_sum, has_aux=True)(params)
        # Gradients and sums summed across devices as one flat vector: XLA:CPU's
        # all-reduce meets the other devices once per operand, and each meeting waits.
        flat, unflatten = jax.flatten_util.ravel_pytree((grads, sums))
        return unflatten(jax.lax.psum(flat, "data"))

    split = P("data")
    grads, sums = jax.shard_map(
        grads_and_sums, mesh=mesh, in_specs=(P(), split, split, split), out_specs=P()
    )(state.params, batch["image"], batch["label"], batch["weight"])
    count = jnp.maximum(sums[2], 1)
    grads = jax.tree.map(lambda g: g / count, grads)
    return state.apply_gradients(grads=grads), sums, sums[0] / count


def make_epoch_fns(
    config: Config,
    model: nn.Module,
    mesh: Mesh,
    n_train: int,
    on_step: Callable[[int, float, float], None] | None = None,
):
    """Builds the jitted ``train_epoch`` and ``evaluate`` for one run.

    ``on_step(step, loss_sum, count)``, if given, is called from inside the jitted epoch
    (``jax.debug.callback``) about 50 times an epoch and after its last step, e.g. to draw a
    progress bar.

    ``train_epoch(state, batches) -> (state, sums, bad_step)`` runs a whole epoch as one
    ``lax.scan`` over ``batches`` (``batches_on_mesh`` of the training split in
    ``epoch_order(seed, epoch, n)``). ``sums`` is ``[loss_sum, correct, count]``;
    ``bad_step`` is ``-1``, or the first step whose loss or updated parameters were not
    finite, after which the state is left as it was before that step.

    ``evaluate(params, batches) -> sums`` runs over a split's batches (in fixed order, of
    ``eval_batch_size``).
    """
    replicated = sharding.replicated(mesh)
    report_every = max(1, -(-n_train // config.batch_size) // 50)

    def train_epoch(state, batches):
        steps = batches["label"].shape[0]

        def body(carry, xs):
            state, sums, bad_step = carry
            i, batch = xs
            new_state, batch_sums, loss = train_step(
                state, batch, mesh=mesh, sequence=config.sequence
            )
            finite = jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(new_state.params)])
            ok = jnp.isfinite(loss) & finite.all() & (bad_step < 0)
            state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
            bad_step = jnp.where((bad_step < 0) & ~ok, state.step, bad_step)
            sums = sums + jnp.where(ok, batch_sums, 0)
            if on_step is not None:
                jax.lax.cond(
                    (i % report_every == 0) | (i == steps - 1),
                    lambda: jax.debug.callback(on_step, i, sums[0], sums[2]),
                    lambda: None,
                )
            return (state, sums, bad_step), None

        init = (state, jnp.zeros(3, jnp.float32), jnp.array(-1, state.step.dtype))
        (state, sums, bad_step), _ = jax.lax.scan(body, init, (jnp.arange(steps), batches))
        return state, sums, bad_step

    def evaluate(params, batches):
        def body(sums, batch):
            x = data_lib.to_sequences(batch["image"], config.sequence)
            logits = model.apply({"params": params}, x)
            return sums + loss_and_metrics(logits, batch["label"], batch["weight"]), None

        sums, _ = jax.lax.scan(body, jnp.zeros(3, jnp.float32), batches)
        return sums

    train_epoch = jax.jit(train_epoch, donate_argnums=0, out_shardings=replicated)
    evaluate = jax.jit(evaluate, out_shardings=replicated)
    return train_epoch, evaluate


def rates(sums) -> tuple[float, float]:
    loss_sum, correct, count = (float(v) for v in sums)
    return loss_sum / max(count, 1), correct / max(count, 1)


def load_data(config: Config) -> tuple[data_lib.Dataset, data_lib.Split]:
    """The data set, and its training split cut to ``max_train_examples``."""
    ds = data_lib.load(
        config.dataset,
        data_dir=config.data_dir,
        validation_split=config.validation_split,
        download=config.download,
    )
    train = ds.train
    if config.max_train_examples is not None:
        n = config.max_train_examples
        train = data_lib.Split(train.images[:n], train.labels[:n])
    if config.batch_size > len(train):
        raise ConfigError(
            "batch_size",
            f"batch_size {config.batch_size} is larger than the {len(train)} training examples",
        )
    return ds, train


def evaluate_params(
    config: Config,
    model: nn.Module,
    params: Any,
    split: str = "test",
    *,
    data_dir: str | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Loss and accuracy of ``model`` with ``params`` on a split (``train``, ``validation``
    or ``test``) of ``config``'s data set, read as ``config.sequence``, data parallel over
    every device: ``{"split", "examples", "loss", "accuracy"}``. ``data_dir`` and
    ``download`` override the config's."""
    splits = ("train", "validation", "test")
    if split not in splits:
        raise ConfigError("split", f"split must be one of {', '.join(splits)}; got {split!r}")
    config = dataclasses.replace(config, data_dir=data_dir or config.data_dir, download=download)
    ds, train = load_data(config)
    images_labels = {"train": train, "validation": ds.validation, "test": ds.test}[split]
    mesh = sharding.data_mesh()
    _, evaluate = make_epoch_fns(config, model, mesh, len(train))
    params = jax.device_put(params, sharding.replicated(mesh))
    sums = jax.device_get(evaluate(params, sharding.eval_batches(images_labels, config, mesh)))
    loss, accuracy = rates(sums)
    return {"split": split, "examples": len(images_labels), "loss": loss, "accuracy": accuracy}
