"""The optimizer a config describes: Keras's optimizers with their defaults, optax's learning
rate schedules, and global-norm gradient clipping; the learning rate a state has reached; and
its state's layout in checkpoints (``to_saved``, ``from_saved``, ``saved_shapes``).

Schedules (``Config.lr_schedule``), over the run's ``epochs`` times its steps per epoch:

* ``constant``: ``learning_rate`` throughout.
* ``cosine``: ``optax.cosine_decay_schedule`` from ``learning_rate`` to 0.
* ``warmup_cosine``: ``optax.warmup_cosine_decay_schedule``, from 0 up to ``learning_rate``
  over the first epoch (at most half the run), then down to 0.
* ``reduce_on_plateau``: ``optax.contrib.reduce_on_plateau`` (Keras's
  ``ReduceLROnPlateau``), on the training loss averaged over each epoch: the rate is halved
  after ``PLATEAU_PATIENCE`` epochs without an improvement of 1e-4 (relative).

Each schedule's position (its step count, or the plateau's scale and count) lives in the
optimizer's state, so a resumed run continues it where it stopped.
"""

from __future__ import annotations

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from lstm_jax.training.config import Config

PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2  # epochs


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> float | optax.Schedule:
    """The learning rate, or its schedule by step, of ``config``."""
    lr, total = config.learning_rate, max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total)
    if config.lr_schedule == "warmup_cosine":
        warmup = max(1, min(steps_per_epoch, total // 2))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=total)
    return lr  # constant; reduce_on_plateau scales the updates of a constant rate


def make_optimizer(config: Config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """Keras's defaults for each optimizer (epsilon 1e-7, RMSprop rho 0.9, AdamW decay 0.004),
    with ``config``'s schedule and ``clipnorm`` (global norm, as Keras's
    ``global_clipnorm``: all gradients scaled together so that their norm is at most it).

    The optimizer runs on the small parameter arrays as one flat vector (its state, e.g.
    Adam's moments, flat too), and on each array of ``OWN_FROM`` elements or more as it is
    (``grouped``): the same elementwise update, but XLA compiles a few kernels for the many
    small arrays instead of a few for each, so the epoch compiles faster, and a large array's
    gradient is not copied into the vector at every step (``benchmarks/NOTES.md``).
    ``reduce_on_plateau`` needs the step's loss: ``update(..., value=loss)``.
    """
    lr = learning_rate_schedule(config, steps_per_epoch)
    optimizer = {
        "adam": lambda: optax.adam(lr, eps=1e-7),
        "sgd": lambda: optax.sgd(lr),
        "rmsprop": lambda: optax.rmsprop(lr, decay=0.9, eps=1e-7),
        "adamw": lambda: optax.adamw(lr, eps=1e-7, weight_decay=0.004),
    }[config.optimizer]()
    parts = []
    if config.clipnorm is not None:
        parts.append(optax.clip_by_global_norm(config.clipnorm))
    parts.append(optimizer)
    if config.lr_schedule == "reduce_on_plateau":
        parts.append(
            optax.contrib.reduce_on_plateau(
                factor=PLATEAU_FACTOR,
                patience=PLATEAU_PATIENCE,
                accumulation_size=steps_per_epoch,
            )
        )
    return grouped(parts[0] if len(parts) == 1 else optax.chain(*parts))


def needs_loss(config: Config) -> bool:
    """Whether the optimizer's ``update`` takes ``value=loss``."""
    return config.lr_schedule == "reduce_on_plateau"


def current_learning_rate(config: Config, opt_state, step: int, steps_per_epoch: int) -> float:
    """The learning rate at ``step`` (the next update's), for the epoch records."""
    lr = learning_rate_schedule(config, steps_per_epoch)
    if callable(lr):
        return float(lr(step))
    if config.lr_schedule == "reduce_on_plateau":
        return float(lr * optax.tree_utils.tree_get(opt_state, "scale"))
    return float(lr)


# A parameter array of this many elements or more has optimizer state arrays of its own.
OWN_FROM = 1 << 16


def _group(tree):
    """``tree``'s arrays as the optimizer sees them: the small ones (below ``OWN_FROM``
    elements) as one flat vector, in the tree's order; with large ones, the tuple of that
    vector and the large arrays, in order."""
    leaves = jax.tree.leaves(tree)
    small = [jnp.reshape(x, -1) for x in leaves if math.prod(x.shape) < OWN_FROM]
    flat = jnp.concatenate(small) if small else jnp.zeros(0, jnp.float32)
    large = [x for x in leaves if math.prod(x.shape) >= OWN_FROM]
    return (flat, *large) if large else flat


def _ungroup(groups, like):
    """The tree of ``like``'s structure and shapes whose ``_group`` is ``groups``."""
    leaves, treedef = jax.tree.flatten(like)
    flat, large = (groups[0], iter(groups[1:])) if type(groups) is tuple else (groups, None)
    out, at = [], 0
    for x in leaves:
        size = math.prod(x.shape)
        if size >= OWN_FROM:
            out.append(next(large))
        else:
            out.append(jnp.reshape(flat[at : at + size], x.shape))
            at += size
    return jax.tree.unflatten(treedef, out)


def grouped(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` on the parameters as ``_group`` lays them out; without large arrays, this
    is ``optax.flatten(inner)``, its state included."""
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return inner.init(_group(params))

    def update_fn(updates, state, params=None, **extra_args):
        params = None if params is None else _group(params)
        grouped_updates, state = inner.update(_group(updates), state, params, **extra_args)
        return _ungroup(grouped_updates, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _has_large(params) -> bool:
    return any(math.prod(x.shape) >= OWN_FROM for x in jax.tree.leaves(params))


def _saved_layout(opt_state, params):
    """``opt_state`` (``grouped``'s, for ``params``) in the layout checkpoints keep, that of
    ``optax.flatten``: each per-parameter state array one flat vector of all parameters."""
    want = [x.shape for x in _group(params)]

    def is_groups(x):
        return (
            type(x) is tuple
            and all(hasattr(a, "shape") for a in x)
            and [a.shape for a in x] == want
        )

    def flat(groups):
        return jax.flatten_util.ravel_pytree(_ungroup(groups, params))[0]

    return jax.tree.map(lambda x: flat(x) if is_groups(x) else x, opt_state, is_leaf=is_groups)


def _grouped_layout(opt_state, params):
    """The inverse of ``_saved_layout``: a checkpoint's optimizer state as ``grouped``'s."""
    all_params, unravel = jax.flatten_util.ravel_pytree(params)

    def is_flat(x):
        return x.shape == all_params.shape

    return jax.tree.map(lambda x: _group(unravel(x)) if is_flat(x) else x, opt_state)


def to_saved(state):
    """``state`` (a ``TrainState``) with its optimizer state in the layout checkpoints keep
    (``optax.flatten``'s, whatever the model), on the parameters' devices."""
    if not _has_large(state.params):
        return state  # the same layout
    convert = jax.jit(_saved_layout, out_shardings=_sharding(state.params))
    return state.replace(opt_state=convert(state.opt_state, state.params))


def from_saved(state):
    """The inverse of ``to_saved``: a restored checkpoint's state, to train on."""
    if not _has_large(state.params):
        return state
    convert = jax.jit(_grouped_layout, out_shardings=_sharding(state.params))
    return state.replace(opt_state=convert(state.opt_state, state.params))


def saved_shapes(abstract):
    """``abstract`` (a ``TrainState`` of ``jax.ShapeDtypeStruct``s, with shardings) as a
    checkpoint holds it: what ``to_saved`` makes of it."""
    if not _has_large(abstract.params):
        return abstract
    saved = jax.eval_shape(_saved_layout, abstract.opt_state, abstract.params)
    sharding = _sharding(abstract.params)
    return abstract.replace(
        opt_state=jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), saved
        )
    )


def _sharding(params):
    """The sharding of the (replicated) parameters."""
    return jax.tree.leaves(params)[0].sharding
