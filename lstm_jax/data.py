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

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import socket

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import console
from lstm_jax.errors import DataError
from lstm_jax.npz import load_npz as load_npz
from lstm_jax.npz import save_npz as save_npz

SEQUENCES = ("rows", "pixels", "permuted")
PERMUTATION_SEED = 0  # fixed: every run of ``permuted`` reads pixels in the same order


@dataclasses.dataclass(frozen=True)
class Split:
    """``images``: uint8 images ``[N, H, W, C]``, or float32 sequences ``[N, T, F]``
    (``from_arrays``); ``labels: [N]`` int32; ``lengths``: ``[N]`` int32, each sequence's
    valid steps (the rest is padding), or None. On the host."""

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
    run can load again by its name)."""

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int
    from_arrays: bool = False


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
    sequences ``[B, T, F]`` (``from_arrays``) are already that, and come back as they are.

    >>> import numpy as np
    >>> x = np.zeros((2, 28, 28, 1), np.uint8)
    >>> to_sequences(x, "rows").shape, to_sequences(x, "pixels").shape
    ((2, 28, 28), (2, 784, 1))
    """
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {SEQUENCES}; got {sequence!r}")
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


def sequence_shape(image_shape: tuple[int, ...], sequence: str) -> tuple[int, int]:
    """``(time, features)`` of one image read as ``sequence``, or of one sequence."""
    if len(image_shape) == 2:
        return tuple(image_shape)
    h, w, c = image_shape
    return (h, w * c) if sequence == "rows" else (h * w, c)


def _network_reachable(timeout: float = 3.0) -> bool:
    """Whether TFDS's download host answers; checked so that no download hangs offline."""
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _where(data_dir: str | None) -> str:
    if data_dir:
        return data_dir
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


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


def _tfds():
    """``tensorflow_datasets``, imported when data is first loaded (it is heavy), with its
    TensorFlow kept off every GPU, as the flax examples do: TensorFlow would otherwise
    reserve the GPU's memory that JAX needs.

    Raises:
      DataError: TFDS cannot be imported; says what failed.
    """
    try:
        with console.native_log_held():
            import tensorflow as tf
            import tensorflow_datasets as tfds
            import tensorflow_datasets.core  # noqa: F401  (TFDS defers import errors to here)

            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:  # TensorFlow already started its devices in this process
                pass
    except Exception as e:  # VersionError, ImportError, ...: each a broken environment
        hint = ""
        if "tensorflow_metadata" in str(e):
            hint = (
                " The installed tensorflow-metadata was built for a newer protobuf than the "
                "installed one (seen on Google Colab): `pip install 'tensorflow-metadata<1.21'`"
                ", then restart the Python session."
            )
        if isinstance(e, ModuleNotFoundError) and e.name in ("tensorflow", "tensorflow_datasets"):
            hint = (
                " Without them, give the data as a FILE.npz in Keras's mnist.npz layout "
                "(--dataset FILE.npz; lstm_jax.data.load('FILE.npz'))."
            )
        raise DataError(
            f"TensorFlow Datasets cannot be imported here: {type(e).__name__}: "
            f"{str(e)[:300]}.{hint}"
        ) from None
    return tfds


# A TFDS name: lowercase words joined by underscores, and optionally ":" and a version.
_NAME = re.compile(r"[a-z][a-z0-9_]*(:\d+\.\d+\.\d+)?")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        guess = re.sub(r"[^a-z0-9_:.]", "_", str(name).strip().lower())
        raise DataError(
            f"{name!r} is not a TFDS data set name, which is lowercase letters, digits and "
            f"underscores, optionally with :VERSION (e.g. fashion_mnist, mnist:3.0.1). Did you "
            f"mean {guess!r}?"
        )


@contextlib.contextmanager
def _absl_warnings_held():
    """TFDS's absl warnings held back meanwhile (e.g. "Variant folder ... has no
    dataset_info.json" before the data is found missing, which ``load`` then explains)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_split(name: str, split: str, data_dir: str | None, download: bool) -> Split:
    tfds = _tfds()
    import tensorflow as tf

    with _absl_warnings_held():
        ds = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True, download=download)
    images, labels = [], []
    try:
        for x, y in tfds.as_numpy(ds.batch(10_000)):
            images.append(x)
            labels.append(y)
    except tf.errors.OpError as e:  # DataLossError, FailedPreconditionError, ...
        version_dir = pathlib.Path(tfds.builder(name, data_dir=data_dir).data_dir)
        files = sorted(str(p) for p in version_dir.glob(f"{name}-{split}.*"))
        reason = e.message.split("}}")[-1].split(" [Op:")[0].strip()
        raise DataError(
            f"the prepared {name} data cannot be read: {' or '.join(files) or version_dir}: "
            f"{reason} ({type(e).__name__}). {_rebuild(name, version_dir)}"
        ) from None
    return Split(np.concatenate(images), np.concatenate(labels).astype(np.int32))


def _parses(path: pathlib.Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _rebuild(name: str, version_dir: pathlib.Path) -> str:
    """How to replace a damaged prepared data set."""
    return (
        f"The files are damaged: delete {version_dir} and prepare {name} again (`tfds build "
        f"{name} --data_dir {version_dir.parent.parent}`, or any run with network access)."
    )


def load(
    name: str = "mnist",
    *,
    data_dir: str | None = None,
    validation_split: float = 0.2,
    download: bool = True,
) -> Dataset:
    """Loads an image classification data set; holds out the end of ``train``.

    As Keras's ``validation_split``, the *last* ``validation_split`` of the training set
    (before any shuffling) is the validation set: 48,000 / 12,000 for MNIST at 0.2.

    Args:
      name: a TFDS name with ``image`` and ``label`` features, e.g. ``mnist``,
        ``fashion_mnist``; or the path of a ``.npz`` file (``load_npz``), read without
        TensorFlow.
      data_dir: a TFDS data directory; ``None`` is TFDS's own (``TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      validation_split: the fraction held out, in ``[0, 1)``.
      download: let TFDS download and prepare the data when it is missing.

    Raises:
      DataError: unknown data set, data missing and no way to download it, or TFDS not
        importable.
    """
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1); got {validation_split}")
    if str(name).endswith(".npz"):
        train, test = load_npz(name)
        return _held_out(str(name), train, test, validation_split)
    _check_name(name)
    tfds = _tfds()
    try:
        with _absl_warnings_held():
            builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders()
        close = difflib.get_close_matches(name, known, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DataError(f"TFDS does not know a data set called {name!r}.{hint}") from None
    except (AssertionError, ValueError) as e:  # e.g. a version TFDS does not have
        reason = str(e).rsplit('": ', 1)[-1].splitlines()[0]  # after TFDS's preamble
        raise DataError(f"TFDS cannot open {name!r}: {reason}") from None
    except Exception as e:  # a dataset_info.json or features.json that does not parse
        infos = sorted(pathlib.Path(_where(data_dir), name.split(":")[0]).glob("*/*.json"))
        version_dir = infos[-1].parent if infos else pathlib.Path(_where(data_dir), name)
        broken = [p for p in infos if not _parses(p)]
        reason = str(e).rsplit('": ', 1)[-1].splitlines()[0]
        raise DataError(
            f"the prepared {name} data cannot be read: {broken[0] if broken else version_dir}: "
            f"{reason} "
            f"({type(e).__name__}). {_rebuild(name, version_dir)}"
        ) from None
    features = builder.info.features
    if "image" not in features or "label" not in features or len(features["image"].shape) != 3:
        raise DataError(
            f"{name!r} is not an image classification data set with 'image' [H, W, C] and "
            f"'label' features; its features are {list(features)}"
        )
    try:
        train, test = (_load_split(name, s, data_dir, download=False) for s in ("train", "test"))
    except AssertionError as e:
        if "could not find data" not in str(e):  # only TFDS's "not prepared here"
            raise
        where = _where(data_dir)
        if not download or not _network_reachable():
            why = (
                "downloading is off (download=False, --no-download)"
                if not download
                else "the network is unreachable"
            )
            raise DataError(
                f"{name} is not prepared in {where} (where TFDS looked), and {why}. Prepare it "
                f"on a machine with network access (`tfds build {name}`, or one run of train.py "
                "there), copy that tensorflow_datasets directory here, and point at it with "
                "data_dir=DIR (train.py --data-dir DIR) or TFDS_DATA_DIR=DIR."
            ) from None
        train, test = (_load_split(name, s, data_dir, download=True) for s in ("train", "test"))

    return _held_out(name, train, test, validation_split, int(features["label"].num_classes))


def _held_out(name, train: Split, test: Split, validation_split: float, num_classes=None):
    """The ``Dataset`` with the last ``validation_split`` of ``train`` held out (Keras's
    split point); ``num_classes`` from the labels when not given."""
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
    return Dataset(name, *splits, num_classes=num_classes)


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
    sees each sequence only up to its length (``lstm_jax.nn``'s layers keep the state across
    padding, as Keras's masking does). As Keras's ``validation_split``, the last
    ``validation_split`` of the training set is held out. ``num_classes``: by default one
    more than the largest label.

    Raises:
      DataError: an array of another shape, type or range than this says; names which.
    """
    train = _arrays_split("train", x_train, y_train, lengths_train)
    test = _arrays_split("test", x_test, y_test, lengths_test)
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
    if not 0 < validation_split < 1:
        raise DataError(
            f"validation_split must be strictly between 0 and 1; got {validation_split}"
        )
    largest = int(max(train.labels.max(initial=0), test.labels.max(initial=0)))
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
    ds = _held_out(name, train, test, validation_split, int(num_classes or largest + 1))
    return dataclasses.replace(ds, from_arrays=True)


def float32(x) -> np.ndarray:
    """``x`` as contiguous float32; a value beyond float32's range becomes infinite (for the
    caller's finiteness check to refuse), without NumPy's overflow warning."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(x, np.float32)


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
