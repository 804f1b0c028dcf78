"""Data in Keras's ``mnist.npz`` layout, the file ``keras.datasets.mnist.load_data()``
caches: read (``load_npz``, behind ``data.load("FILE.npz")``) and written (``save_npz``),
without TensorFlow. ``lstm_jax.data`` gives both.
"""

from __future__ import annotations

import os

import numpy as np

from lstm_jax.data import splits as data_lib
from lstm_jax.errors import DataError

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike) -> tuple[data_lib.Split, data_lib.Split]:
    """``(train, test)`` from a ``.npz`` in Keras's ``mnist.npz`` layout, the file
    ``keras.datasets.mnist.load_data()`` caches: ``x_train`` and ``x_test`` uint8 images
    ``[N, H, W]`` (or ``[N, H, W, C]``), ``y_train`` and ``y_test`` integer labels ``[N]``.
    TFDS's MNIST training set is in the file's order, so both give the same validation split.

    Raises:
      DataError: the file is missing or unreadable, lacks a key, or holds arrays of another
        shape or type; says which.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(
                    f"{path} lacks {', '.join(missing)}: a data file needs x_train, y_train, "
                    f"x_test, y_test (Keras's mnist.npz layout); it has {', '.join(f.files)}"
                )
            arrays = {k: f[k] for k in _NPZ_KEYS}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read the data file {path}: {e}") from e
    return tuple(_npz_split(path, arrays, part) for part in ("train", "test"))


def save_npz(ds: data_lib.Dataset, path: str | os.PathLike) -> None:
    """Writes ``ds`` in Keras's ``mnist.npz`` layout, compressed, for a machine without
    TensorFlow: its training set with the validation split back at its end, then its test
    set; single-channel images as ``[N, H, W]``. ``load_npz`` reads it back."""

    def images(*splits: data_lib.Split) -> np.ndarray:
        x = np.concatenate([s.images for s in splits])
        return x[..., 0] if x.shape[-1] == 1 else x

    labels = np.uint8 if ds.num_classes <= 256 else np.int32
    np.savez_compressed(
        path,
        x_train=images(ds.train, ds.validation),
        y_train=np.concatenate([ds.train.labels, ds.validation.labels]).astype(labels),
        x_test=images(ds.test),
        y_test=ds.test.labels.astype(labels),
    )


def _npz_split(path, arrays: dict, part: str) -> data_lib.Split:
    x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(
            f"{path}: x_{part} must be uint8 images [N, H, W] or [N, H, W, C]; got "
            f"{x.dtype} {list(x.shape)}"
        )
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if not np.issubdtype(y.dtype, np.integer) or y.shape != x.shape[:1] or (y < 0).any():
        raise DataError(
            f"{path}: y_{part} must be integer labels from 0, one per image ([{len(x)}]); "
            f"got {y.dtype} {list(y.shape)}"
        )
    images = x[..., None] if x.ndim == 3 else x
    return data_lib.Split(np.ascontiguousarray(images), y.astype(np.int32))
