"""Early stopping as Keras's ``EarlyStopping(monitor="val_loss", patience=P,
restore_best_weights=True)``: a run with ``Config.early_stopping = P`` stops once ``P`` epochs
have passed without a lower validation loss than its best epoch's, and ends with that
epoch's weights, which it tests and ``load_run`` gives back.

The best epoch's weights travel in the training state (``steps.TrainState.best``), so every
checkpoint holds them and a resumed run goes on counting its patience from its history.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax.training.config import Config


def _best(history: list[dict]) -> dict:
    """The record of lowest ``val_loss`` (the first, if tied)."""
    return min(history, key=lambda h: h["val_loss"])


def best_epoch(history: list[dict]) -> int | None:
    """The epoch of lowest ``val_loss`` (the first, if tied), or None before any."""
    return _best(history)["epoch"] if history else None


def stopped(config: Config, history: list[dict]) -> bool:
    """Whether the run has waited ``config.early_stopping`` epochs past its best."""
    if config.early_stopping is None or not history:
        return False
    return history[-1]["epoch"] - best_epoch(history) >= config.early_stopping


@jax.jit
def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def track(config: Config, state, history: list[dict]):
    """``state`` with ``best`` set to its own weights if its epoch, the last of ``history``,
    is the best so far."""
    if config.early_stopping is None or best_epoch(history) != history[-1]["epoch"]:
        return state
    return state.replace(best=_copy({"params": state.params, "model_state": state.model_state}))


def best_state(config: Config, state):
    """``state`` with the best epoch's weights, under early stopping; else as it is."""
    if config.early_stopping is None:
        return state
    return state.replace(params=state.best["params"], model_state=state.best["model_state"])


def summary(config: Config, history: list[dict]) -> dict:
    """What ``metrics.json`` says of early stopping: nothing without it."""
    if config.early_stopping is None:
        return {}
    best = _best(history)
    return {
        "early_stopping": {
            "patience": config.early_stopping,
            "best_epoch": best["epoch"],
            "best_val_loss": best["val_loss"],
            "stopped_after_epoch": history[-1]["epoch"] if stopped(config, history) else None,
            "weights": f"epoch {best['epoch']}'s",
        }
    }


def line(config: Config, history: list[dict]) -> str:
    best = _best(history)
    return (
        f"early stopping: val_loss has not improved for {config.early_stopping} epoch(s); "
        f"the weights of epoch {best['epoch']} (val_loss {best['val_loss']:.4f}) are kept"
    )
