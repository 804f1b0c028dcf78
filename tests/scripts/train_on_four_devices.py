"""Trains on fake data with the FAKE settings (JSON) on four CPU devices with train.py's
CPU tuning; writes the final parameters' leaves to a JSON file.

    python train_on_four_devices.py SETTINGS_JSON DATA_DIR WORKDIR OUT_JSON
"""

import json
import pathlib
import sys

from lstm_jax._process import cpu

assert cpu.use_host_cores(4)  # before JAX starts its backends

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from lstm_jax import training  # noqa: E402

settings, data_dir, workdir, out = sys.argv[1:]
assert jax.device_count() == 4, jax.devices()
config = training.Config(**json.loads(settings), data_dir=data_dir)
with tfds.testing.mock_data(num_examples=512):
    result = training.train_and_evaluate(config, workdir, print_fn=lambda s: None)
params = jax.device_get(result["state"].params)
leaves = [np.asarray(x).tolist() for x in jax.tree.leaves(params)]
pathlib.Path(out).write_text(json.dumps(leaves))
