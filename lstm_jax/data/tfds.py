"""Data sets by name (``load``): image classification or text (``tiny_shakespeare``) from
TensorFlow Datasets, a ``.npz`` file in Keras's ``mnist.npz`` layout (``load("FILE.npz")``,
read without TensorFlow), or a UTF-8 text file (``load("FILE.txt")``)."""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import pathlib
import re
import socket
import sys

import numpy as np

from lstm_jax._process import console
from lstm_jax.data import text as text_lib
from lstm_jax.data.npz import load_npz
from lstm_jax.data.splits import Dataset, Split, held_out
from lstm_jax.errors import DataError


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


def _tensorflow_not_yet_imported() -> bool:
    return "tensorflow" not in sys.modules


def _tfds():
    """``tensorflow_datasets``, imported when data is first loaded (it is heavy). When it is
    lstm_jax that imports TensorFlow, TensorFlow is kept off every GPU, as the flax examples
    do: it would otherwise reserve the GPU's memory that JAX needs. A TensorFlow the caller
    imported first is theirs, and left as they set it.

    Raises:
      DataError: TFDS cannot be imported; says what failed.
    """
    ours = _tensorflow_not_yet_imported()
    try:
        with console.native_log_held():
            import tensorflow as tf
            import tensorflow_datasets as tfds
            import tensorflow_datasets.core  # noqa: F401  (TFDS defers import errors to here)

            try:
                if ours:
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
        ) from e
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
        ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
    if "text" in ds.element_spec:
        return Split(np.zeros((0,), np.int32), np.zeros((0,), np.int32))  # read by _texts
    ds = ds.map(lambda x: (x["image"], x["label"]))
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
        ) from e
    return Split(np.concatenate(images), np.concatenate(labels).astype(np.int32))


def _texts(name: str, data_dir: str | None, download: bool) -> list[str]:
    """The train, validation and test texts of a TFDS text data set (one ``text`` each)."""
    tfds = _tfds()
    _splits(name, data_dir, download)  # prepared, or a DataError that says how
    texts = []
    for split in ("train", "validation", "test"):
        with _absl_warnings_held():
            ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
        texts.append("".join(x["text"].decode("utf-8") for x in tfds.as_numpy(ds)))
    return texts


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
    bptt: int = 100,
) -> Dataset:
    """Loads an image classification data set, or a text; holds out the end of ``train``.

    As Keras's ``validation_split``, the *last* ``validation_split`` of the training set
    (before any shuffling) is the validation set: 48,000 / 12,000 for MNIST at 0.2.

    Args:
      name: a TFDS name with ``image`` and ``label`` features, e.g. ``mnist``,
        ``fashion_mnist``, or with one ``text`` per split (``tiny_shakespeare``: its own
        train, validation and test texts); or the path of a ``.npz`` file (``load_npz``),
        read without TensorFlow; or of a ``.txt`` file (``text.from_text``).
      data_dir: a TFDS data directory; ``None`` is TFDS's own (``TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      validation_split: the fraction held out, in ``[0, 1)``.
      download: let TFDS download and prepare the data when it is missing.
      bptt: for text, the steps of each window (``text.windows``).

    Raises:
      DataError: unknown data set, data missing and no way to download it, or TFDS not
        importable.
    """
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1); got {validation_split}")
    if str(name).endswith(".npz"):
        train, test = load_npz(name)
        return held_out(str(name), train, test, validation_split)
    if str(name).endswith(".txt"):
        return text_lib.load_text_file(name, bptt=bptt, validation_split=validation_split)
    _check_name(name)
    builder = _builder(name, data_dir)
    features = builder.info.features
    if "text" in features and "image" not in features:
        texts = _texts(name, data_dir, download)
        return text_lib.text_dataset(name, *texts, bptt=bptt)
    if "image" not in features or "label" not in features or len(features["image"].shape) != 3:
        raise DataError(
            f"{name!r} is not an image classification data set with 'image' [H, W, C] and "
            f"'label' features; its features are {list(features)}"
        )
    train, test = _splits(name, data_dir, download)
    return held_out(name, train, test, validation_split, int(features["label"].num_classes))


def _builder(name: str, data_dir: str | None):
    """TFDS's builder of ``name`` in ``data_dir``; each way it can fail, one ``DataError``."""
    tfds = _tfds()
    try:
        with _absl_warnings_held():
            return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        known = tfds.list_builders()
        close = difflib.get_close_matches(name, known, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DataError(f"TFDS does not know a data set called {name!r}.{hint}") from e
    except (AssertionError, ValueError) as e:  # e.g. a version TFDS does not have
        reason = str(e).rsplit('": ', 1)[-1].splitlines()[0]  # after TFDS's preamble
        raise DataError(f"TFDS cannot open {name!r}: {reason}") from e
    except Exception as e:  # a dataset_info.json or features.json that does not parse
        infos = sorted(pathlib.Path(_where(data_dir), name.split(":")[0]).glob("*/*.json"))
        version_dir = infos[-1].parent if infos else pathlib.Path(_where(data_dir), name)
        broken = [p for p in infos if not _parses(p)]
        reason = str(e).rsplit('": ', 1)[-1].splitlines()[0]
        raise DataError(
            f"the prepared {name} data cannot be read: {broken[0] if broken else version_dir}: "
            f"{reason} "
            f"({type(e).__name__}). {_rebuild(name, version_dir)}"
        ) from e


def _splits(name: str, data_dir: str | None, download: bool) -> tuple[Split, Split]:
    """``(train, test)``, prepared where missing if ``download`` and the network allow."""
    try:
        return tuple(_load_split(name, s, data_dir, download=False) for s in ("train", "test"))
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
            ) from e
    return tuple(_load_split(name, s, data_dir, download=True) for s in ("train", "test"))
