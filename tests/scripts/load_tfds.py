"""Imports TFDS the way ``lstm_jax.data`` does, then prints one line."""

from lstm_jax import data

data.tfds._tfds()
print("loaded")
