"""``lstm_jax.linen`` under its former name, so that ``from lstm_jax import nn`` and runs
saved with ``lstm_jax.nn`` classes keep working. Write ``from lstm_jax import linen``:
``nn`` is the name Flax users give ``flax.linen``."""

import sys

from lstm_jax import linen

sys.modules[__name__] = linen
