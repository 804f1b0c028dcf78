"""The data a run learns from: images from TensorFlow Datasets or from a ``.npz`` file in
Keras's ``mnist.npz`` layout (no TensorFlow needed), read as sequences; text (TFDS's
``tiny_shakespeare``, a ``.txt`` file, or a string: ``from_text``) as windows of character
ids; or your own arrays (``from_arrays``): float sequences ``[N, T, F]`` or token ids
``[N, T]``, with each one's length if they differ, and the targets of any task (``TASKS``).

Each image ``[H, W, C]`` becomes a sequence in one of three ways (``sequence=``):

* ``rows``: ``H`` steps of ``W * C`` features; MNIST gives the lesson's 28 steps x 28.
* ``pixels``: ``H * W`` steps of ``C`` features, one pixel at a time (784 x 1 for MNIST).
* ``permuted``: as ``pixels``, in one fixed random order (the same for every run), the
  classic long-memory benchmark.

Images stay ``uint8`` (a quarter of float32's memory) up to the jitted step, where
``to_sequences`` scales them to ``[0, 1]``. ``load`` returns them read-only, on the host;
``gather`` takes a batch's rows into 64-byte aligned memory, which XLA's CPU devices use in
place (no second copy).
"""

from lstm_jax.data.arrays import from_arrays
from lstm_jax.data.npz import load_npz, save_npz
from lstm_jax.data.splits import (
    PERMUTATION_SEED,
    SEQUENCES,
    TASKS,
    Dataset,
    Split,
    example_input,
    fingerprint,
    float32,
    gather,
    held_out,
    sequence_shape,
    to_sequences,
)
from lstm_jax.data.text import from_text
from lstm_jax.data.tfds import load
from lstm_jax.errors import DataError

__all__ = [
    "PERMUTATION_SEED",
    "SEQUENCES",
    "TASKS",
    "DataError",
    "Dataset",
    "Split",
    "example_input",
    "fingerprint",
    "float32",
    "from_arrays",
    "from_text",
    "gather",
    "held_out",
    "load",
    "load_npz",
    "save_npz",
    "sequence_shape",
    "to_sequences",
]
