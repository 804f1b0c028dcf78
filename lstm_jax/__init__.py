"""lstm_jax: LSTM, GRU and SimpleRNN as pure JAX functions run by ``jax.lax.scan``.

The package is in layers, each importing only those below it:

* the model, here at the top: the cells and sequence functions (``recurrent``, over
  ``cells``, ``lstm_scan``, ``gru_scan`` and ``lstm_cudnn``), the Flax layers (``linen``,
  ``nnx``), parameter counts (``params``) and Keras models in and out (``keras_io``; Keras
  is imported only when those are called);
* ``lstm_jax.data``: data sets and your own arrays as sequences;
* ``lstm_jax.training``: the trainer, its run directories and ``load_run``.

``import lstm_jax`` loads the model layer only; ``load_run`` and ``training`` load the
trainer (optax, orbax) when first used.
"""

import importlib

from lstm_jax import linen
from lstm_jax._version import __version__
from lstm_jax.keras_io import from_keras, to_keras
from lstm_jax.params import (
    count_params,
    describe,
    gru_param_count,
    lstm_param_count,
    simple_rnn_param_count,
    summary,
)
from lstm_jax.recurrent import (
    gru,
    gru_cell,
    init_gru,
    init_lstm,
    init_simple_rnn,
    lstm,
    lstm_cell,
    simple_rnn,
    simple_rnn_cell,
)

nn = linen  # the former name of ``linen``

__all__ = [
    "__version__",
    "count_params",
    "data",
    "describe",
    "from_keras",
    "gru",
    "gru_cell",
    "gru_param_count",
    "init_gru",
    "init_lstm",
    "init_simple_rnn",
    "linen",
    "load_run",
    "lstm",
    "lstm_cell",
    "lstm_param_count",
    "nnx",
    "simple_rnn",
    "simple_rnn_cell",
    "simple_rnn_param_count",
    "summary",
    "to_keras",
    "training",
]

_LAZY = {"load_run": ("lstm_jax.training.runs", "load_run")}
_SUBPACKAGES = ("data", "training", "nnx")


def __getattr__(name: str):
    """``load_run`` and the heavier subpackages, imported when first used."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"lstm_jax.{name}")
    raise AttributeError(f"module 'lstm_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))
