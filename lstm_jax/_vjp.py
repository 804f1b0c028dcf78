"""What the custom-gradient rules (``lstm_scan``, ``gru_scan``, ``lstm_cpu``) share: with
``symbolic_zeros=True``, a forward rule's arguments arrive as ``CustomVJPPrimal(value,
perturbed)``, and the cotangent of an output nothing depends on as a ``SymbolicZero``."""

from __future__ import annotations

import jax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

__all__ = ["instantiate", "is_zero", "primal_values", "zeros"]


def primal_values(tree):
    """The arrays of a forward rule's ``CustomVJPPrimal`` arguments."""
    return jax.tree.map(lambda a: a.value, tree, is_leaf=lambda a: isinstance(a, CustomVJPPrimal))


def zeros(like: jax.Array, shape: tuple[int, ...], dtype=None) -> jax.Array:
    """Zeros of ``shape``, typed like ``like``: inside ``jax.shard_map``, varying over the
    same mesh axes, as a scan carry that starts from them must be."""
    return jax.lax.full_like(like, 0, dtype, shape)


def is_zero(cotangent) -> bool:
    return isinstance(cotangent, SymbolicZero)


def instantiate(cotangent, like: jax.Array) -> jax.Array:
    """``cotangent`` as an array: zeros of its shape and dtype, varying like ``like``, for a
    ``SymbolicZero``."""
    if is_zero(cotangent):
        return zeros(like, cotangent.aval.shape, cotangent.aval.dtype)
    return cotangent
