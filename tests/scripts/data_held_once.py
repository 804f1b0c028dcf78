"""For each split's images and labels placed on a mesh of every device: how many shards,
whether they all use the host array in place, and whether the host array is writeable.

    python data_held_once.py DATA_DIR
"""

import sys

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lstm_jax import data, training

replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())
with tfds.testing.mock_data(num_examples=503):
    ds = data.load("mnist", data_dir=sys.argv[1])
for split in (ds.train, ds.validation, ds.test):
    for host in (split.images, split.labels):
        placed = training._on_mesh(host, replicated)
        pointers = {s.data.unsafe_buffer_pointer() for s in placed.addressable_shards}
        shared = pointers == {host.ctypes.data}
        print(len(placed.addressable_shards), shared, host.flags.writeable)
