"""Your own sequences as a ``Dataset``: ``from_arrays``."""

from __future__ import annotations

import dataclasses

import numpy as np

from lstm_jax.data.splits import Dataset, Split, float32, held_out
from lstm_jax.errors import DataError


def from_arrays(
    x_train,
    y_train,
    *,
    x_test,
    y_test,
    lengths_train=None,
    lengths_test=None,
    validation_split: float = 0.2,
    num_classes: int | None = None,
    name: str = "arrays",
) -> Dataset:
    """Your own data as the ``Dataset`` the trainer takes (``train_and_evaluate(..., data=)``).

    ``x_*`` are float sequences ``[N, T, F]`` (any float dtype, kept as float32, taken as
    they are: scale them yourself), or uint8 images ``[N, H, W]`` / ``[N, H, W, C]`` (read as
    the config's ``sequence``, as TFDS's are); ``y_*`` integer labels from 0, ``[N]``. With
    ``lengths_train`` and ``lengths_test`` (ints ``[N]``, each from 1 to ``T``), step ``t``
    of sequence ``n`` is padding when ``t >= lengths[n]``: the model is given the mask and
    sees each sequence only up to its length (``lstm_jax.linen``'s layers keep the state across
    padding, as Keras's masking does). As Keras's ``validation_split``, the last
    ``validation_split`` of the training set is held out. ``num_classes``: by default one
    more than the largest label.

    Raises:
      DataError: an array of another shape, type or range than this says; names which.
    """
    train = _arrays_split("train", x_train, y_train, lengths_train)
    test = _arrays_split("test", x_test, y_test, lengths_test)
    _check_pair(train, test)
    if not 0 < validation_split < 1:
        raise DataError(
            f"validation_split must be strictly between 0 and 1; got {validation_split}"
        )
    largest = int(max(train.labels.max(initial=0), test.labels.max(initial=0)))
    _check_classes(train, largest, num_classes)
    ds = held_out(name, train, test, validation_split, int(num_classes or largest + 1))
    return dataclasses.replace(ds, from_arrays=True)


def _check_pair(train: Split, test: Split) -> None:
    """The training and test splits are the same kind of data, with lengths or without."""
    if (train.lengths is None) != (test.lengths is None):
        raise DataError(
            "lengths_train and lengths_test go together: give both (the model is trained "
            "and tested on masked sequences) or neither"
        )
    if train.images.shape[1:] != test.images.shape[1:] and train.images.ndim == 4:
        raise DataError(
            f"x_train's images are {list(train.images.shape[1:])} and x_test's "
            f"{list(test.images.shape[1:])}: they must match"
        )
    if train.images.ndim != test.images.ndim or train.images.shape[-1] != test.images.shape[-1]:
        raise DataError(
            f"x_train {list(train.images.shape)} and x_test {list(test.images.shape)} must be "
            "the same kind of data with the same features (the last axis)"
        )


def _check_classes(train: Split, largest: int, num_classes) -> None:
    """``num_classes`` (if given) holds every label, and the training labels two classes."""
    if num_classes is not None and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int | np.integer)
        or num_classes <= largest
    ):
        raise DataError(
            f"num_classes must be an int above the largest label ({largest}); got {num_classes!r}"
        )
    if len(np.unique(train.labels)) < 2:
        raise DataError(
            f"y_train holds one class only (every label is {int(train.labels[0])}): a "
            "classifier learns nothing from it (loss 0, accuracy 100% from the start); give "
            "examples of at least two classes"
        )


def _arrays_split(part: str, x, y, lengths) -> Split:
    """One ``from_arrays`` split, checked."""
    x, y = np.asarray(x), np.asarray(y)
    images = x.dtype == np.uint8 and x.ndim in (3, 4)
    if not (images or (np.issubdtype(x.dtype, np.floating) and x.ndim == 3)) or x.size == 0:
        raise DataError(
            f"x_{part} must be float sequences [N, T, F] or uint8 images [N, H, W(, C)], none "
            f"empty; got {x.dtype} {list(x.shape)}"
        )
    x = np.ascontiguousarray(x[..., None] if images and x.ndim == 3 else x)
    if not images:
        x = float32(x)
        if not np.isfinite(x).all():
            raise DataError(
                f"x_{part} holds NaN or infinite values, or values beyond float32's range "
                "(3.4e38) that become infinite as float32; pad with finite values (0)"
            )
    if not np.issubdtype(y.dtype, np.integer) or y.shape != x.shape[:1] or (y < 0).any():
        raise DataError(
            f"y_{part} must be integer labels from 0, one per example ([{len(x)}]); got "
            f"{y.dtype} {list(y.shape)}"
        )
    if y.size and int(y.max()) > np.iinfo(np.int32).max:
        raise DataError(
            f"y_{part} holds the label {int(y.max())}: labels are class ids from 0 to "
            "num_classes - 1, and must fit int32 (below 2**31)"
        )
    if lengths is not None:
        lengths = np.asarray(lengths)
        steps = x.shape[1]
        if images:
            raise DataError(f"lengths_{part} are for sequences [N, T, F], not images")
        if not np.issubdtype(lengths.dtype, np.integer) or lengths.shape != y.shape:
            raise DataError(
                f"lengths_{part} must be ints, one per sequence ([{len(x)}]); got "
                f"{lengths.dtype} {list(lengths.shape)}"
            )
        if (lengths < 1).any() or (lengths > steps).any():
            raise DataError(
                f"lengths_{part} must be from 1 to {steps} (x_{part}'s time steps); got "
                f"{int(lengths.min())} to {int(lengths.max())}"
            )
        lengths = np.ascontiguousarray(lengths, np.int32)
    return Split(x, np.ascontiguousarray(y, np.int32), lengths)
