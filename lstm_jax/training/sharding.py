"""Where the data and the state live: the devices, a one-axis data mesh over them, and each
epoch's batches placed on it.

Each epoch's order is drawn by NumPy from the run's seed and the epoch number
(``epoch_order``), as Keras shuffles, and its batches are placed on the devices before it
starts (``batches_on_mesh``): each device receives only its slice of every batch, and each
process gathers and places only its own devices' slices, so N processes make the same global
batches as one process. (``jax.random``'s permutation sorts, which is slow to run and to
compile on a CPU.)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lstm_jax import data as data_lib
from lstm_jax.errors import ConfigError, DeviceError
from lstm_jax.training.config import Config


def devices() -> list[jax.Device]:
    """``jax.devices()``, with any failure to start the platforms asked for reported as
    ``DeviceError`` (JAX raises ``RuntimeError`` for most, ``AssertionError`` for a platform
    its install does not know, such as ``cuda`` without the CUDA plugin)."""
    try:
        return jax.devices()
    except Exception as e:
        asked = os.environ.get("JAX_PLATFORMS")
        hint = (
            f" JAX_PLATFORMS={asked!r} asks for a platform this machine or this jax install "
            "lacks (an NVIDIA GPU needs pip install 'jax[cuda12]'); unset it to use what is here."
            if asked
            else ""
        )
        reason = (str(e).strip().splitlines() or [f"{type(e).__name__} in jax.devices()"])[0]
        raise DeviceError(f"JAX cannot start its devices: {reason}.{hint}") from e


def data_mesh(batch_size: int | None = None) -> Mesh:
    """A one-axis mesh, ``("data",)``, over every device JAX sees; ``batch_size``, if given,
    must split evenly across it."""
    mesh = Mesh(np.array(devices()), ("data",))
    if batch_size is not None and batch_size % mesh.size:
        raise ConfigError(
            "batch_size",
            f"batch_size {batch_size} must be a multiple of the {mesh.size} devices "
            "the batch is split across.",
        )
    return mesh


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array every device of ``mesh`` holds whole."""
    return NamedSharding(mesh, P())


def place_replicated(tree: Any, mesh: Mesh) -> Any:
    """``tree``'s arrays, which this process holds whole, replicated on ``mesh``; each
    process places its own copy (``jax.device_put`` would first compare the copies across
    processes)."""
    sharding = replicated(mesh)

    def place(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` training examples: ``int32 [n]``.

    A permutation drawn by NumPy from ``(seed, epoch)`` alone, so that a resumed run, and
    every process of a multi-host run, draws the same one.

    >>> sorted(epoch_order(0, 1, 5)) == list(range(5))
    True
    >>> bool((epoch_order(0, 1, 100) == epoch_order(0, 2, 100)).all())  # each epoch its own
    False
    """
    return np.random.default_rng((seed, epoch)).permutation(n).astype(np.int32)


def batches_on_mesh(
    split: data_lib.Split, order: np.ndarray, batch_size: int, mesh: Mesh
) -> dict[str, jax.Array]:
    """The examples of ``split`` in ``order`` as batches on ``mesh``: ``image`` (``uint8
    [steps, batch, H, W, C]``, or sequences ``[steps, batch, T, F]``), ``label`` and
    ``weight`` (``[steps, batch]``), and ``length`` where the split has lengths, the last
    batch padded with weight 0, each batch split across the mesh's devices
    (``P(None, "data")``).

    Each process gathers, from its own copy of ``split`` on the host, only the examples of
    its own devices' slices, and places only those: several processes given the same
    ``order`` make the same global batches as one process would.
    """
    n = len(order)
    steps = -(-n // batch_size)
    index = np.zeros(steps * batch_size, np.int32)
    index[:n] = order
    index = index.reshape(steps, batch_size)
    weight = (np.arange(steps * batch_size) < n).astype(np.float32).reshape(steps, batch_size)
    return _place_batches(split, index, weight, mesh)


def stream_index(n: int, streams: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index, weight)``, each ``[steps, streams]``: ``n`` windows of a text, in the text's
    order, as ``streams`` contiguous streams read side by side (char-rnn's and PyTorch's
    ``batchify``): stream ``s`` is windows ``s * steps`` to ``(s + 1) * steps - 1``, so row
    ``s`` of batch ``k + 1`` continues row ``s`` of batch ``k``. Past the last window, weight 0.

    >>> index, weight = stream_index(5, 2)
    >>> index.tolist(), weight.tolist()
    ([[0, 3], [1, 4], [2, 0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    """
    steps = -(-n // streams)
    index = np.arange(steps * streams, dtype=np.int32).reshape(streams, steps).T
    weight = (index < n).astype(np.float32)
    return np.ascontiguousarray(np.where(index < n, index, 0)), np.ascontiguousarray(weight)


def stream_batches(split: data_lib.Split, streams: int, mesh: Mesh) -> dict[str, jax.Array]:
    """``split``'s windows as ``streams`` contiguous streams (``stream_index``), placed as
    ``batches_on_mesh`` places its batches: each device holds the same rows, so the same
    streams, in every batch."""
    index, weight = stream_index(len(split), streams)
    return _place_batches(split, index, weight, mesh)


def _place_batches(split, index: np.ndarray, weight: np.ndarray, mesh: Mesh) -> dict:
    """The examples ``index`` (``[steps, batch]``) names, with their ``weight``, on ``mesh``."""
    steps, batch_size = index.shape
    sharding = NamedSharding(mesh, P(None, "data"))

    def place(array):
        shape = (steps, batch_size, *array.shape[1:])
        return jax.make_array_from_callback(
            shape, sharding, lambda i: data_lib.gather(array, index[i[:2]])
        )

    batches = {
        "image": place(split.images),
        "label": place(split.labels),
        "weight": jax.make_array_from_callback(weight.shape, sharding, lambda i: weight[i]),
    }
    if split.lengths is not None:
        batches["length"] = place(split.lengths)
    return batches


def eval_batch_size(config: Config, mesh: Mesh) -> int:
    """The batch that evaluation runs in: at least 1024, a multiple of the mesh's size."""
    batch = max(1024, config.batch_size)
    return batch - batch % mesh.size


def eval_batches(split: data_lib.Split, config: Config, mesh: Mesh) -> dict[str, jax.Array]:
    """``split``'s batches for ``evaluate``: in the split's order, of ``eval_batch_size``."""
    order = np.arange(len(split), dtype=np.int32)
    return batches_on_mesh(split, order, eval_batch_size(config, mesh), mesh)
