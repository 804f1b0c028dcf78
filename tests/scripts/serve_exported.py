"""Serves a run exported by ``Run.export`` in a Python where lstm_jax, Flax, optax, orbax,
TensorFlow and Keras cannot be imported: with jax and numpy alone, as a user elsewhere would.

    python serve_exported.py FILE CALLS.npz OUT.npz

``CALLS.npz`` holds ``call<k>_<n>``, the ``n``-th argument of call ``k``; ``OUT.npz`` gets
``call<k>_<n>``, its ``n``-th output. A language model's file also writes text when
``CALLS.npz`` holds ``prompt`` (ids ``[1, t]``), ``length``, ``seed`` and ``temperature``:
``generated``, the ids drawn as ``Run.generate`` draws them. Prints ``blocked`` for each
module it could not import, then ``served``.
"""

import importlib.abc
import pathlib
import sys

BLOCKED = ("lstm_jax", "flax", "optax", "orbax", "tensorflow", "keras")


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} cannot be imported here")
        return None


sys.meta_path.insert(0, _Refuse())

import jax  # noqa: E402
import numpy as np  # noqa: E402

for name in BLOCKED:
    try:
        __import__(name)
    except ModuleNotFoundError:
        print("blocked", name)

path, calls_path, out_path = sys.argv[1:4]
exported = jax.export.deserialize(pathlib.Path(path).read_bytes())
calls = dict(np.load(calls_path))
out, k = {}, 0
while f"call{k}_0" in calls:
    args = [calls[f"call{k}_{n}"] for n in range(len(calls)) if f"call{k}_{n}" in calls]
    results = exported.call(*args)
    results = results if isinstance(results, tuple | list) else (results,)
    out.update({f"call{k}_{n}": np.asarray(r) for n, r in enumerate(results)})
    k += 1
if "prompt" in calls:
    temperature, key = float(calls["temperature"]), jax.random.key(int(calls["seed"]))
    draw = jax.jit(lambda logits, key: jax.random.categorical(key, logits / temperature, axis=-1))
    state = [np.zeros((1, *a.shape[1:]), a.dtype) for a in exported.in_avals[1:]]
    logits, *state = exported.call(calls["prompt"], *state)
    drawn = []
    for i in range(int(calls["length"])):
        token = draw(logits[:, -1], jax.random.fold_in(key, i))
        drawn.append(int(token[0]))
        logits, *state = exported.call(np.asarray(token, np.int32)[:, None], *state)
    out["generated"] = np.asarray(drawn, np.int32)
np.savez(out_path, **out)
print("served")
