"""The optimizer a config describes: Keras's optimizers with their defaults, optax's learning
rate schedules, and global-norm gradient clipping; and the learning rate a state has reached.

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

    The optimizer runs on all parameters as one flat vector (``optax.flatten``; its state,
    e.g. Adam's moments, is flat too): the same elementwise update, but XLA compiles a few
    kernels for it instead of a few per parameter array, so the epoch compiles faster
    (``benchmarks/NOTES.md``). ``reduce_on_plateau`` needs the step's loss: ``update(...,
    value=loss)``.
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
    return optax.flatten(parts[0] if len(parts) == 1 else optax.chain(*parts))


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
