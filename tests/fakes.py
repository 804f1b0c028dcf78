"""Small runs on fake data for the tests: TFDS's mock_data (512 random images), batch 64,
LSTM(16) (unless a model is given), 2 epochs, unless overridden."""

import os
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lstm_jax import training

FAKE = dict(units=(16,), batch_size=64, epochs=2, progress=False)


def run_fake(workdir, *, num_examples=512, model=None, **overrides):
    """``train_and_evaluate`` on fake data in ``workdir / "run"`` (its TFDS directory
    ``workdir / "tfds"``), printing nothing."""
    fake = {k: v for k, v in FAKE.items() if model is None or k != "units"}  # model='s own
    config = training.Config(**{**fake, "data_dir": str(workdir / "tfds"), **overrides})
    with tfds.testing.mock_data(num_examples=num_examples):
        return training.train_and_evaluate(
            config, workdir / "run", model=model, print_fn=lambda s: None
        )


def params_of(result):
    return jax.tree.map(np.asarray, jax.device_get(result["state"].params))


def real_data_dir() -> str:
    """The TFDS directory holding the prepared MNIST (``TFDS_DATA_DIR``): CI must have it;
    elsewhere a test that needs it is skipped, saying how to run it."""
    path = os.environ.get("TFDS_DATA_DIR")
    if path and (pathlib.Path(path) / "mnist").is_dir():
        return path
    if os.environ.get("CI"):
        pytest.fail(f"CI needs the prepared MNIST: TFDS_DATA_DIR={path!r} holds no mnist/")
    pytest.skip("set TFDS_DATA_DIR to a TFDS directory holding mnist to run the real-data test")
