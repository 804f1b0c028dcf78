"""lstm_jax: LSTM, GRU and SimpleRNN as pure JAX functions run by ``jax.lax.scan``.

The functional core lives in ``lstm_jax.recurrent``, the Flax layers in ``lstm_jax.nn``,
parameter accounting in ``lstm_jax.params``, training in ``lstm_jax.training``, trained runs
in ``lstm_jax.runs`` (``load_run``), Keras models in and out in ``lstm_jax.keras_io``
(Keras is imported only when those are called).
"""

import importlib.metadata

from lstm_jax import nn as nn
from lstm_jax.keras_io import from_keras as from_keras
from lstm_jax.keras_io import to_keras as to_keras
from lstm_jax.params import count_params as count_params
from lstm_jax.params import gru_param_count as gru_param_count
from lstm_jax.params import lstm_param_count as lstm_param_count
from lstm_jax.params import simple_rnn_param_count as simple_rnn_param_count
from lstm_jax.params import summary as summary
from lstm_jax.recurrent import gru as gru
from lstm_jax.recurrent import gru_cell as gru_cell
from lstm_jax.recurrent import init_gru as init_gru
from lstm_jax.recurrent import init_lstm as init_lstm
from lstm_jax.recurrent import init_simple_rnn as init_simple_rnn
from lstm_jax.recurrent import lstm as lstm
from lstm_jax.recurrent import lstm_cell as lstm_cell
from lstm_jax.recurrent import simple_rnn as simple_rnn
from lstm_jax.recurrent import simple_rnn_cell as simple_rnn_cell
from lstm_jax.runs import load_run as load_run

try:
    __version__ = importlib.metadata.version("lstm_jax")  # pyproject.toml's, as installed
except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
    __version__ = "unknown"
