"""Data without TensorFlow: a ``.npz`` in Keras's ``mnist.npz`` layout, as ``--dataset``."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lstm_jax import data
from lstm_jax.training import runs as runs_lib
from tests import reference
from tests.fakes import real_data_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
SMALL = ("--units", "8", "--epochs", "1", "--no-progress", "--cpu-devices", "1")


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory):
    """The prepared MNIST (through TFDS) written as Keras's ``mnist.npz``: uint8 ``[N, 28,
    28]`` images and uint8 labels, the training set in its own order."""
    path = tmp_path_factory.mktemp("npz") / "mnist.npz"
    data.save_npz(data.load("mnist", data_dir=real_data_dir()), path)
    with np.load(path) as f:  # Keras's layout, as keras.datasets.mnist caches it
        assert {k: (f[k].dtype, f[k].shape) for k in f.files} == {
            "x_train": (np.uint8, (60_000, 28, 28)),
            "y_train": (np.uint8, (60_000,)),
            "x_test": (np.uint8, (10_000, 28, 28)),
            "y_test": (np.uint8, (10_000,)),
        }
    return path


@pytest.mark.slow
def test_an_npz_loads_as_the_same_data_as_tfds(mnist_npz):
    from_tfds, from_npz = data.load("mnist", data_dir=real_data_dir()), data.load(mnist_npz)
    assert (len(from_npz.train), len(from_npz.validation), len(from_npz.test)) == (
        48_000,
        12_000,
        10_000,
    )
    assert from_npz.num_classes == 10 and from_npz.name == str(mnist_npz)
    for split in ("train", "validation", "test"):
        a, b = getattr(from_tfds, split), getattr(from_npz, split)
        assert data.fingerprint(a) == data.fingerprint(b)


@pytest.mark.slow
def test_train_py_trains_from_an_npz_without_tensorflow_as_from_tfds(tmp_path, mnist_npz):
    """The same run from the npz, on a Python where TensorFlow and TFDS cannot be imported,
    and from TFDS: the same test accuracy, the same weights."""
    runs = {}
    for source, script, dataset in [
        ("npz", SCRIPTS / "train_without_tensorflow.py", mnist_npz),
        ("tfds", ROOT / "train.py", "mnist"),
    ]:
        runs[source] = tmp_path / source
        out = subprocess.run(
            [sys.executable, script, "--dataset", dataset, "--workdir", runs[source], *SMALL],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "TFDS_DATA_DIR": real_data_dir()},
        )
        assert out.returncode == 0, out.stderr[-3000:]
    npz, tfds = (json.loads((runs[s] / "metrics.json").read_text()) for s in ("npz", "tfds"))
    assert npz["config"]["dataset"] == str(mnist_npz)
    assert npz["test_accuracy"] == tfds["test_accuracy"] > 0.5
    reference.assert_trees_close(
        runs_lib.load_run(runs["npz"]).params, runs_lib.load_run(runs["tfds"]).params, atol=0
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"y_train": None, "x_test": None, "y_test": None}, "lacks y_train, x_test, y_test"),
        ({"x_train": np.zeros((4, 28, 28))}, "x_train must be uint8"),
        ({"y_train": np.zeros(3, np.uint8)}, r"y_train must .* \(\[4\]\)"),
        ({"y_test": np.zeros(2, np.float32)}, "y_test must be integer"),
    ],
    ids=["keys", "images", "count", "labels"],
)
def test_an_npz_that_is_not_keras_layout_is_one_clear_error(tmp_path, changes, message):
    arrays = {
        "x_train": np.zeros((4, 28, 28), np.uint8),
        "y_train": np.zeros(4, np.uint8),
        "x_test": np.zeros((2, 28, 28), np.uint8),
        "y_test": np.zeros(2, np.uint8),
        **changes,
    }
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(data.DataError, match=message):
        data.load(path)


def test_a_missing_npz_is_one_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="cannot read the data file .*missing.npz"):
        data.load(tmp_path / "missing.npz")
