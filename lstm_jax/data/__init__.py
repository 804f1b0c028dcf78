"""Classification data: images from TensorFlow Datasets or from a ``.npz`` file in Keras's
``mnist.npz`` layout (no TensorFlow needed), read as sequences; or your own arrays
(``from_arrays``): float sequences ``[N, T, F]``, with each one's length if they differ.

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
    Dataset,
    Split,
    fingerprint,
    float32,
    gather,
    held_out,
    sequence_shape,
    to_sequences,
)
from lstm_jax.data.tfds import load
from lstm_jax.errors import DataError

__all__ = [
    "PERMUTATION_SEED",
    "SEQUENCES",
    "DataError",
    "Dataset",
    "Split",
    "fingerprint",
    "float32",
    "from_arrays",
    "gather",
    "held_out",
    "load",
    "load_npz",
    "save_npz",
    "sequence_shape",
    "to_sequences",
]
