"""How the trainer calls a Flax linen module, any module: its variables beyond ``params``, its
training switch, the random streams it draws from, and the mask of padded steps.

* **Collections.** Variables a module keeps besides ``params`` (``nn.BatchNorm``'s
  ``batch_stats``, any ``self.variable`` in a collection of its own) are found when the model
  is initialised; training updates them (``mutable=``), the trainer carries them in its state
  and averages them across devices, checkpoints save them and ``load_run`` gives them back.
  Only ``intermediates`` (``self.sow``'s default) is not kept.
* **The training switch.** A ``__call__`` keyword named ``deterministic`` (Flax's, as
  ``nn.Dropout``'s), ``train`` (the flax examples') or ``training`` (Keras's) is set for
  training and evaluation; a module with none of them is called as it is.
* **Random streams.** Every training step gives the module a fresh ``dropout`` key; any other
  stream it asks for (``self.make_rng("noise")``) draws from the ``params`` key that is given
  too, which Flax uses for streams it was not given, so every stream gets a fresh key per step.
  Evaluation gives fixed keys.
* **The mask.** With sequences of given lengths, ``mask=`` (bool ``[batch, time]``) is passed
  to a module whose ``__call__`` takes it (``lstm_jax.linen``'s models do).
* **The state carried.** A module whose ``__call__`` takes ``initial_state`` and
  ``return_state`` (``lstm_jax.linen.LanguageModel``) can read a text as streams: each
  window starts from the state the previous one ended in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm_jax.forward import parameters_of

SWITCHES = ("deterministic", "train", "training")  # how a __call__ may name the switch
NOT_KEPT = ("params", "intermediates")


@dataclasses.dataclass(frozen=True)
class Calls:
    """How to call one module: ``switch``, the keyword its ``__call__`` takes for training
    (one of ``SWITCHES``, or None); ``collections``, the names of the variable collections it
    keeps besides ``params``; ``takes_mask``, whether ``__call__`` takes ``mask=``;
    ``carries_state``, whether it takes ``initial_state=`` and ``return_state=``."""

    switch: str | None = None
    collections: tuple[str, ...] = ()
    takes_mask: bool = False
    carries_state: bool = False

    def kwargs(self, *, train: bool, mask: jax.Array | None = None) -> dict[str, Any]:
        """The keywords ``__call__`` gets for a training or an evaluation call."""
        kwargs = {}
        if self.switch == "deterministic":
            kwargs["deterministic"] = not train
        elif self.switch is not None:
            kwargs[self.switch] = train
        if mask is not None:
            kwargs["mask"] = mask
        return kwargs


def calls_of(module: nn.Module, variables: dict | None = None) -> Calls:
    """``Calls`` for ``module``, whose initial ``variables`` (from ``init``) name its
    collections."""
    names = parameters_of(module)
    switch = next((s for s in SWITCHES if s in names), None)
    collections = tuple(sorted(k for k in (variables or {}) if k not in NOT_KEPT))
    carries = {"initial_state", "return_state"} <= names
    return Calls(
        switch=switch, collections=collections, takes_mask="mask" in names, carries_state=carries
    )


def step_rngs(seed: int, step: jax.Array, device: jax.Array | int = 0) -> dict[str, jax.Array]:
    """The keys of one training step on one device: ``dropout`` and ``params`` (which Flax
    gives to any other stream a module asks for), from the run's seed, the step number
    (so a resumed run draws what an unbroken one would) and the device's index."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)
    dropout, params = jax.random.split(jax.random.fold_in(key, device))
    return {"dropout": dropout, "params": params}


def eval_rngs(seed: int) -> dict[str, jax.Array]:
    """Fixed keys for evaluation, for a module that draws even when not training."""
    dropout, params = jax.random.split(jax.random.fold_in(jax.random.key(seed), 2))
    return {"dropout": dropout, "params": params}


def apply(
    apply_fn: Callable,
    calls: Calls,
    variables: dict,
    x: jax.Array,
    *,
    train: bool,
    rngs: dict[str, jax.Array],
    mask: jax.Array | None = None,
    initial_state: Any = None,
    return_state: bool = False,
):
    """``(logits, updated collections)``: the model (its ``apply_fn``, ``module.apply``) on
    ``x`` with ``variables`` (``params`` and the collections ``calls`` names); in training
    the collections come back updated, in evaluation as they were. With ``return_state``
    (a model that ``carries_state``), ``(logits, state)`` in place of the logits, starting
    from ``initial_state``."""
    kwargs = calls.kwargs(train=train, mask=mask)
    if return_state:
        kwargs.update(initial_state=initial_state, return_state=True)
    kept = {k: v for k, v in variables.items() if k != "params"}
    if train and calls.collections:
        logits, updates = apply_fn(
            variables, x, rngs=rngs, mutable=list(calls.collections), **kwargs
        )
        return logits, {k: updates[k] for k in calls.collections if k in updates}
    return apply_fn(variables, x, rngs=rngs, **kwargs), kept


def apply_from(
    apply_fn: Callable,
    calls: Calls,
    variables: dict,
    x: jax.Array,
    state: Any,
    *,
    train: bool,
    rngs: dict[str, jax.Array],
    mask: jax.Array | None = None,
):
    """``(logits, updated collections, state after x)``: ``apply`` from ``state`` (the state a
    model that ``carries_state`` ended the previous window in), or with ``state`` None as
    ``apply`` alone (and None back)."""
    carried = state is not None
    out, updated = apply(
        apply_fn,
        calls,
        variables,
        x,
        train=train,
        rngs=rngs,
        mask=mask,
        initial_state=state,
        return_state=carried,
    )
    logits, state = out if carried else (out, None)
    return logits, updated, state


def lengths_mask(lengths: jax.Array, steps: int) -> jax.Array:
    """Bool ``[batch, steps]``: step ``t`` of row ``b`` is valid while ``t < lengths[b]``.

    >>> lengths_mask(jnp.array([1, 3]), 3).tolist()
    [[True, False, False], [True, True, True]]
    """
    return jnp.arange(steps)[None, :] < jnp.asarray(lengths)[:, None]
