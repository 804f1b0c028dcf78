"""For each sequence function, with and without a mask and initial states: whether its
gradient per device, summed by ``jax.shard_map``, equals the whole batch's."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import lstm_jax

mesh = Mesh(np.array(jax.devices()), ("data",))
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(4, 6, 3)), jnp.float32)
mask = jnp.asarray(rng.random((4, 6)) < 0.8)
for fn, init, n in [
    (lstm_jax.lstm, lstm_jax.init_lstm, 2),
    (lstm_jax.gru, lstm_jax.init_gru, 1),
    (lstm_jax.simple_rnn, lstm_jax.init_simple_rnn, 1),
]:
    params = init(jax.random.key(0), 3, 5)
    states = tuple(jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(n))
    for m, s in [(None, None), (mask, None), (None, states)]:

        def loss(params, x, m, s, fn=fn):
            out = fn(params, x, return_sequences=True, mask=m, initial_state=s)
            return jnp.sum(jnp.sin(out))

        batch = P("data")
        per_device = jax.shard_map(
            jax.grad(loss), mesh=mesh, out_specs=P(), in_specs=(P(), batch, batch, batch)
        )(params, x, m, s)
        whole = jax.grad(loss)(params, x, m, s)
        pairs = zip(jax.tree.leaves(per_device), jax.tree.leaves(whole), strict=True)
        print(max(float(jnp.abs(a - b).max()) for a, b in pairs) < 1e-5)
