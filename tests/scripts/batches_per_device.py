"""For an epoch's batches on a mesh of every device: each device's part of the images,
labels and weights, its shape, and whether it holds the examples of its own slice of each
batch, in the epoch's order.

    python batches_per_device.py
"""

import jax
import numpy as np
from jax.sharding import Mesh

from lstm_jax import data
from lstm_jax.training import sharding

mesh = Mesh(np.array(jax.devices()), ("data",))
n, batch = 203, 64  # the last batch padded
rng = np.random.default_rng(0)
split = data.Split(
    rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)
)
order = sharding.epoch_order(0, 1, n)
batches = sharding.batches_on_mesh(split, order, batch, mesh)
index = np.concatenate([order, np.zeros(4 * batch - n, np.int32)]).reshape(4, batch)
weight = (np.arange(4 * batch) < n).reshape(4, batch)
expected = {"image": split.images[index], "label": split.labels[index], "weight": weight}
for name, array in batches.items():
    for shard in array.addressable_shards:
        own = np.asarray(shard.data)
        print(name, "x".join(map(str, own.shape)), (own == expected[name][shard.index]).all())
