"""The data's shapes: ``Split`` and ``Dataset``, images read as sequences (``to_sequences``),
batches gathered into aligned memory (``gather``), a split's ``fingerprint``, and the
validation split held out as Keras holds it (``held_out``)."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.errors import DataError

SEQUENCES = ("rows", "pixels", "permuted")
# What a run learns from the targets (``lstm_jax.training.tasks``): a class per sequence, a
# class per step, the next token of a text, or float values.
TASKS = ("classify", "per_step", "next_token", "regress")
PERMUTATION_SEED = 0  # fixed: every run of ``permuted`` reads pixels in the same order


@dataclasses.dataclass(frozen=True)
class Split:
    """``images``: uint8 images ``[N, H, W, C]``, float32 sequences ``[N, T, F]``
    (``from_arrays``) or int32 token ids ``[N, T]`` (text); ``labels``: the targets, int32
    classes ``[N]`` or ``[N, T]``, or float32 values ``[N, ...]`` (the task's); ``lengths``:
    ``[N]`` int32, each sequence's valid steps (the rest is padding), or None. On the host."""

    images: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        """The first ``n`` examples."""
        lengths = None if self.lengths is None else self.lengths[:n]
        return Split(self.images[:n], self.labels[:n], lengths)

    def tail(self, n: int) -> Split:
        """The examples from the ``n``-th on."""
        lengths = None if self.lengths is None else self.lengths[n:]
        return Split(self.images[n:], self.labels[n:], lengths)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Three splits and their classes; ``from_arrays``: your own arrays (not a data set a
    run can load again by its name). ``task``: what the targets are for (``TASKS``);
    ``vocabulary``: for text, the characters whose ids the tokens are (id ``i`` is
    ``vocabulary[i]``); ``input_vocab``: for token inputs, how many ids there are (an
    ``Embedding``'s size), else None. ``num_classes`` is 1 for ``regress``."""

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int
    from_arrays: bool = False
    task: str = "classify"
    vocabulary: str | None = None
    input_vocab: int | None = None


def fingerprint(*splits: Split) -> str:
    """A short digest of the splits' images and labels, shapes included: the same data
    gives the same fingerprint on every machine.

    >>> x = Split(np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2, np.int32))
    >>> fingerprint(x) == fingerprint(x), fingerprint(x) == fingerprint(x, x)
    (True, False)
    """
    digest = hashlib.sha256()
    for split in splits:
        arrays = (split.images, split.labels)
        for array in arrays if split.lengths is None else (*arrays, split.lengths):
            digest.update(f"{array.shape} {array.dtype.str};".encode())
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def to_sequences(images: jax.Array, sequence: str = "rows") -> jax.Array:
    """``[B, H, W, C]`` uint8 images -> float32 ``[batch, time, features]`` in ``[0, 1]``;
    sequences ``[B, T, F]`` (``from_arrays``) are already that, and come back as they are, as
    do token ids ``[B, T]`` (an ``Embedding`` reads them).

    >>> import numpy as np
    >>> x = np.zeros((2, 28, 28, 1), np.uint8)
    >>> to_sequences(x, "rows").shape, to_sequences(x, "pixels").shape
    ((2, 28, 28), (2, 784, 1))
    """
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {SEQUENCES}; got {sequence!r}")
    if images.ndim == 2:
        return jnp.asarray(images, jnp.int32)
    if images.ndim == 3:
        return jnp.asarray(images, jnp.float32)
    b, h, w, c = images.shape
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    if sequence == "rows":
        return x.reshape(b, h, w * c)
    x = x.reshape(b, h * w, c)
    if sequence == "permuted":
        x = x[:, _permutation(h * w)]
    return x


def _permutation(n: int) -> np.ndarray:
    return np.random.default_rng(PERMUTATION_SEED).permutation(n)


def sequence_shape(image_shape: tuple[int, ...], sequence: str) -> tuple[int, ...]:
    """``(time, features)`` of one image read as ``sequence``, or of one sequence; ``(time,)``
    of one sequence of token ids."""
    if len(image_shape) <= 2:
        return tuple(image_shape)
    h, w, c = image_shape
    return (h, w * c) if sequence == "rows" else (h * w, c)


# XLA's CPU client uses a host array in place (no copy) when it is aligned to this many
# bytes; NumPy aligns large arrays to 16 only.
_ALIGNMENT = 64


def _empty_aligned(shape: tuple[int, ...], dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buffer = np.empty(nbytes + _ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % _ALIGNMENT
    return buffer[start : start + nbytes].view(dtype).reshape(shape)


def gather(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``array[index]`` (rows), written straight into memory aligned for XLA's CPU client.

    >>> gather(np.arange(5) * 10, np.array([[4, 0], [1, 1]])).tolist()
    [[40, 0], [10, 10]]
    """
    out = _empty_aligned((*index.shape, *array.shape[1:]), array.dtype)
    return np.take(array, index, axis=0, out=out)


def example_input(input_shape: tuple[int, ...], batch: int = 1) -> jax.ShapeDtypeStruct:
    """The model's input for ``batch`` sequences of ``input_shape``: float32 ``[batch, time,
    features]``, or int32 token ids ``[batch, time]`` for ``(time,)``."""
    dtype = jnp.int32 if len(input_shape) == 1 else jnp.float32
    return jax.ShapeDtypeStruct((batch, *input_shape), dtype)


def held_out(name, train: Split, test: Split, validation_split: float, num_classes=None, **kw):
    """The ``Dataset`` with the last ``validation_split`` of ``train`` held out (Keras's
    split point); ``num_classes`` from the labels when not given; ``kw``: the ``Dataset``'s
    other fields."""
    cut = math.floor(len(train) * (1 - validation_split))
    if cut == 0 or (validation_split > 0 and cut == len(train)):
        what = "no example to train on" if cut == 0 else "no example held out for validation"
        raise DataError(
            f"validation_split {validation_split} of {len(train)} training examples leaves "
            f"{what}; give more examples or another split"
        )
    splits = (train.head(cut), train.tail(cut), test)
    for split in splits:  # read-only: every epoch gathers its batches from these
        for array in (split.images, split.labels, split.lengths):
            if array is not None:
                array.flags.writeable = False
    if num_classes is None:
        num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    return Dataset(name, *splits, num_classes=num_classes, **kw)


def float32(x) -> np.ndarray:
    """``x`` as contiguous float32; a value beyond float32's range becomes infinite (for the
    caller's finiteness check to refuse), without NumPy's overflow warning."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(x, np.float32)
