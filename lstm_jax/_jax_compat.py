"""The one place where lstm_jax bridges JAX releases: from 0.7.2 (Google Colab's) to the newest.

JAX renamed how ``jax.shard_map`` code marks a value as varying over mesh axes
(``jax.lax.pvary`` became ``jax.lax.pcast(..., to="varying")``) and where an abstract value
records those axes (``aval.vma`` became ``aval.manual_axis_type.varying``), and made the
removal of a ``jax.monitoring`` listener public; and the two internals lstm_jax reads,
whether the backends have started and whether jaxlib has cuDNN's RNN, live here too.
Everything else lstm_jax uses is public and the same in both.
"""

from __future__ import annotations

import jax


def pvary(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """``x`` marked as varying (per device) over the ``jax.shard_map`` mesh ``axes``."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, axes, to="varying")
    return jax.lax.pvary(x, axes)


def varying_axes(x: jax.Array) -> frozenset:
    """The ``jax.shard_map`` mesh axes over which ``x`` varies (empty outside one)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", frozenset()))


def varying_like(tree, like: jax.Array):
    """``tree`` marked as varying over the ``jax.shard_map`` axes that ``like`` varies over.

    Inside ``shard_map`` (``check_vma=True``) a scan's carry must keep its type, so the
    initial states are cast like the inputs; and the LSTM's parameters enter its
    custom-gradient scan with the inputs' type, so that JAX sums their per-device
    gradients over those axes (the transpose of the cast), as it does for any operation
    that mixes replicated parameters with per-device inputs. Elsewhere nothing varies and
    ``tree`` comes back as it was.
    """

    def cast(x):
        missing = tuple(sorted(varying_axes(like) - varying_axes(x)))
        return pvary(x, missing) if missing else x

    return jax.tree.map(cast, tree)


def unregister_event_time_span_listener(listener) -> None:
    """Removes a listener added with ``jax.monitoring.register_event_time_span_listener``
    (public from JAX 0.8; JAX 0.7 has only its private form)."""
    unregister = getattr(jax.monitoring, "unregister_event_time_span_listener", None)
    if unregister is None:
        from jax._src import monitoring

        unregister = monitoring._unregister_event_time_span_listener_by_callback
    unregister(listener)


def backends_started() -> bool:
    """Whether JAX has started its backends (after which XLA_FLAGS are read no more).
    Importing JAX starts none. JAX has no public form of this, only ``jax._src``'s."""
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def has_cudnn_rnn() -> bool:
    """Whether this jaxlib has the cuDNN RNN kernels behind ``jax.experimental.rnn`` (JAX's
    CUDA plugin); only ``jax._src`` says so before a call fails."""
    try:
        from jax._src.lib import gpu_rnn
    except ImportError:
        return False
    return gpu_rnn is not None
