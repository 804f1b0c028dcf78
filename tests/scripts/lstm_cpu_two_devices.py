"""The CPU kernels (the LSTM's and the GRU's) called by two devices at once, as the trainer's
``shard_map`` calls them, at a size where oneDNN's products need scratch memory: prints the
largest difference of the summed per-device gradients from the whole batch's over 20 steps,
relative to each gradient's largest entry (float32 sums in another order differ by about
1e-6). ``THREADS`` (argument; default 1, the trainer's) sets each call's threads:
with more than one, the two devices' calls run on two teams of the kernel's threads at once."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import lstm_jax
from lstm_jax import lstm_cpu

assert len(jax.devices()) == 2
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
lstm_cpu._threads = lambda: threads
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(32, 28, 28)), jnp.float32)
mesh = Mesh(np.array(jax.devices()), ("data",))
largest = 0.0
for layer, init in ((lstm_jax.lstm, lstm_jax.init_lstm), (lstm_jax.gru, lstm_jax.init_gru)):
    params = init(jax.random.key(0), 28, 512)
    carry = (x[:, 0, :1],) * (2 if layer is lstm_jax.lstm else 1)
    assert lstm_cpu.why_not(params, jnp.swapaxes(x, 0, 1), carry) is None

    def loss(params, x, layer=layer):
        return jnp.sum(jnp.sin(layer(params, x, return_sequences=True))) / 32

    per_device = jax.jit(
        jax.shard_map(jax.grad(loss), mesh=mesh, out_specs=P(), in_specs=(P(), P("data")))
    )
    whole = jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(params, x))
    for _ in range(20):
        got = jax.tree.map(np.asarray, per_device(params, x))
        pairs = zip(jax.tree.leaves(got), jax.tree.leaves(whole), strict=True)
        largest = max(largest, *(np.abs(a - b).max() / np.abs(b).max() for a, b in pairs))
print(float(largest))
