"""Your own sequences as a ``Dataset``: ``from_arrays``."""

from __future__ import annotations

import dataclasses

import numpy as np

from lstm_jax.data.splits import TASKS, Dataset, Split, float32, held_out
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
    task: str | None = None,
    name: str = "arrays",
) -> Dataset:
    """Your own data as the ``Dataset`` the trainer takes (``train_and_evaluate(..., data=)``).

    ``x_*`` are float sequences ``[N, T, F]`` (any float dtype, kept as float32, taken as
    they are: scale them yourself), or uint8 images ``[N, H, W]`` / ``[N, H, W, C]`` (read as
    the config's ``sequence``, as TFDS's are), or int token ids ``[N, T]`` from 0 (the model
    starts with an ``Embedding``). ``y_*`` are the targets of ``task`` (``TASKS``; by default
    inferred from them): ``classify``, integer labels from 0 ``[N]``; ``per_step``, a label
    at every step ``[N, T]``; ``next_token``, as ``per_step`` (each step's target is the next
    token); ``regress``, float values per sequence ``[N]`` or per step ``[N, T]``. With
    ``lengths_train`` and ``lengths_test`` (ints ``[N]``, each from 1 to ``T``), step ``t``
    of sequence ``n`` is padding when ``t >= lengths[n]``: the model is given the mask and
    sees each sequence only up to its length (``lstm_jax.linen``'s layers keep the state across
    padding, as Keras's masking does). As Keras's ``validation_split``, the last
    ``validation_split`` of the training set is held out. ``num_classes``: by default one
    more than the largest label (1 for ``regress``).

    Raises:
      DataError: an array of another shape, type or range than this says; names which.
    """
    task = _task(task, np.asarray(y_train))
    train = _arrays_split("train", x_train, y_train, lengths_train, task)
    test = _arrays_split("test", x_test, y_test, lengths_test, task)
    _check_pair(train, test)
    if not 0 < validation_split < 1:
        raise DataError(
            f"validation_split must be strictly between 0 and 1; got {validation_split}"
        )
    input_vocab = None
    if train.images.ndim == 2:
        input_vocab = int(max(train.images.max(), test.images.max())) + 1
    if task == "regress":
        if num_classes not in (None, 1):
            raise DataError(f"num_classes is for classes; regress has none (got {num_classes})")
        ds = held_out(name, train, test, validation_split, 1, task=task)
    else:
        largest = int(max(train.labels.max(initial=0), test.labels.max(initial=0)))
        if task == "next_token":
            largest = max(largest, input_vocab - 1)
        _check_classes(train, largest, num_classes)
        classes = int(num_classes or largest + 1)
        ds = held_out(name, train, test, validation_split, classes, task=task)
    return dataclasses.replace(ds, from_arrays=True, input_vocab=input_vocab)


def _task(task, y: np.ndarray) -> str:
    """``task``, or the one ``y`` suggests: float values ``regress``, ``[N, T]`` integers
    ``per_step``, ``[N]`` integers ``classify`` (``next_token`` is said, never guessed)."""
    if task is None:
        if np.issubdtype(y.dtype, np.floating):
            return "regress"
        return "per_step" if y.ndim == 2 else "classify"
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return task


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
    features = train.images.ndim != 2 and train.images.shape[-1] != test.images.shape[-1]
    if train.images.ndim != test.images.ndim or features:
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


def _arrays_split(part: str, x, y, lengths, task: str) -> Split:
    """One ``from_arrays`` split, checked."""
    x, y = np.asarray(x), np.asarray(y)
    images = x.dtype == np.uint8 and x.ndim in (3, 4)
    tokens = np.issubdtype(x.dtype, np.integer) and x.ndim == 2 and not images
    floats = np.issubdtype(x.dtype, np.floating) and x.ndim == 3
    if not (images or tokens or floats) or x.size == 0:
        raise DataError(
            f"x_{part} must be float sequences [N, T, F], int token ids [N, T] or uint8 images "
            f"[N, H, W(, C)], none empty; got {x.dtype} {list(x.shape)}"
        )
    if tokens:
        if (x < 0).any() or int(x.max()) > np.iinfo(np.int32).max:
            raise DataError(f"x_{part}'s token ids must be from 0 and fit int32")
        x = np.ascontiguousarray(x, np.int32)
    x = np.ascontiguousarray(x[..., None] if images and x.ndim == 3 else x)
    if task == "next_token" and not tokens:
        raise DataError(
            f"task next_token reads token ids: x_{part} must be ints [N, T]; got {x.dtype} "
            f"{list(x.shape)}"
        )
    if floats:
        x = float32(x)
        if not np.isfinite(x).all():
            raise DataError(
                f"x_{part} holds NaN or infinite values, or values beyond float32's range "
                "(3.4e38) that become infinite as float32; pad with finite values (0)"
            )
    y = _targets(part, y, x, task, images)
    if lengths is not None:
        lengths = np.asarray(lengths)
        steps = x.shape[1]
        if images:
            raise DataError(f"lengths_{part} are for sequences [N, T(, F)], not images")
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
    return Split(x, y, lengths)


def _targets(part: str, y: np.ndarray, x: np.ndarray, task: str, images: bool) -> np.ndarray:
    """``y_{part}``, checked as ``task``'s targets for the inputs ``x``."""
    n = len(x)
    if task == "regress":
        if not np.issubdtype(y.dtype, np.floating) or y.ndim == 0 or len(y) != n:
            raise DataError(
                f"task regress: y_{part} must be float values, one per sequence ([{n}]) or per "
                f"step ([{n}, T]); got {y.dtype} {list(y.shape)} (integer labels are classes: "
                "task classify or per_step)"
            )
        y = float32(y)
        if not np.isfinite(y).all():
            raise DataError(f"y_{part} holds NaN or infinite values")
        return y
    want = [n] if task == "classify" else [n, x.shape[1]]
    kind = "one per example" if task == "classify" else "one at every step"
    if np.issubdtype(y.dtype, np.floating) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"task {task}: y_{part} must be integer labels from 0, {kind} ({want}); got "
            f"{y.dtype} {list(y.shape)} (float targets are values: task regress)"
        )
    if list(y.shape) != want or (y < 0).any() or (images and task != "classify"):
        raise DataError(
            f"task {task}: y_{part} must be integer labels from 0, {kind} ({want}); got "
            f"{y.dtype} {list(y.shape)}"
        )
    if y.size and int(y.max()) > np.iinfo(np.int32).max:
        raise DataError(
            f"y_{part} holds the label {int(y.max())}: labels are class ids from 0 to "
            "num_classes - 1, and must fit int32 (below 2**31)"
        )
    return np.ascontiguousarray(y, np.int32)
