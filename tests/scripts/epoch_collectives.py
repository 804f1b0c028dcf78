"""Compiles one data-parallel training epoch and prints its all-reduce count, whether it
all-gathers, and whether the all-reduce is of one flat vector.

    python epoch_collectives.py BIDIRECTIONAL
"""

import re
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from lstm_jax import data, training
from lstm_jax.training import sharding, steps

config = training.Config(units=(16,), batch_size=64, bidirectional=sys.argv[1] == "True")
mesh = Mesh(np.array(jax.devices()), ("data",))
model = steps.make_model(config, 10)
state = steps.create_train_state(config, model, (28, 28))
train_epoch, _ = steps.make_epoch_fns(config, model, mesh, 256)
split = data.Split(np.zeros((256, 28, 28, 1), np.uint8), np.zeros((256,), np.int32))
batches = sharding.batches_on_mesh(split, np.arange(256, dtype=np.int32), 64, mesh)
hlo = train_epoch.lower(state, batches).compile().as_text()
one_vector = re.search(r"= f32\[\d+\]\{0\} all-reduce\(", hlo) is not None
print(hlo.count("all-reduce("), "all-gather" in hlo, one_vector)
