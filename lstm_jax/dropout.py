"""Keras's dropout for recurrent layers: masks drawn once per sequence (the same at every
step), kept units scaled by ``1 / (1 - rate)``; the inputs' mask applied once, before the
scan, where every gate shares it, else by the cell at each step (its ``masks``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.cells import Array, Params

__all__ = ["apply_dropout", "check_rates", "dropout_masks"]


def dropout_masks(
    cell,
    key: Array,
    shape: tuple[int, int, int],
    dropout: float,
    recurrent_dropout: float,
    dtype: Any = jnp.float32,
) -> tuple[Array | None, Array | None]:
    """``(m_x, m_h)``: dropout's masks for ``cell`` (a ``recurrent.Cell``) over sequences of
    ``shape`` ``(B, D, U)``, as Keras 3 draws them, once per sequence (the same at every step):
    each kept unit is ``1 / (1 - rate)``, each dropped one 0; ``None`` for a rate of 0. With
    recurrent dropout, the LSTM and GRU draw one mask per gate, ``[gates, B, D]`` and ``[gates,
    B, U]`` (Keras's ``implementation=1``); otherwise one for all gates, ``[B, D]``, ``[B, U]``.

    >>> import jax
    >>> from lstm_jax.recurrent import CELLS
    >>> m_x, m_h = dropout_masks(CELLS["lstm"], jax.random.key(0), (2, 3, 5), 0.5, 0.0)
    >>> m_x.shape, m_h, sorted(set(m_x.ravel().tolist())) == [0.0, 2.0]
    ((2, 3), None, True)
    """
    batch, input_dim, units = shape
    per_gate = recurrent_dropout > 0 and cell.gates > 1

    def draw(key, rate, size):
        if rate == 0:
            return None
        keep = jax.random.bernoulli(
            key, 1 - rate, (cell.gates, batch, size) if per_gate else (batch, size)
        )
        return jnp.where(keep, 1 / (1 - rate), 0).astype(dtype)

    k_x, k_h = jax.random.split(key)
    return draw(k_x, dropout, input_dim), draw(k_h, recurrent_dropout, units)


def check_rates(owner: str, **rates) -> None:
    """Refuses a dropout rate (``dropout=``, ``recurrent_dropout=``) that is not a number
    from 0 to below 1, Keras's range; the message names ``owner`` and the rate.

    Raises:
      ValueError: says which rate, and what it is.
    """
    for name, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating):
            raise ValueError(f"{owner}: {name} must be a number; got {rate!r}")
        if not 0 <= rate < 1:
            raise ValueError(
                f"{owner}: {name} must be at least 0 and below 1 (the fraction of units "
                f"dropped in training); got {rate!r}"
            )


def apply_dropout(cell, params: Params, inputs: Array, dropout, recurrent_dropout, key):
    """``(inputs, masks)`` for the options ``dropout``, ``recurrent_dropout`` and ``key``: a
    mask shared by every gate and step multiplies ``inputs`` here, once; ``masks`` are what
    the cell must apply at each step (``(m_x, m_h)``), or None when it has none to apply."""
    rates = dropout, recurrent_dropout
    check_rates(cell.name, dropout=dropout, recurrent_dropout=recurrent_dropout)
    if key is None or not any(rates):
        return inputs, None
    batch, _, input_dim = jnp.shape(inputs)
    shape = (batch, input_dim, jnp.shape(params["recurrent_kernel"])[0])
    m_x, m_h = dropout_masks(cell, key, shape, *rates, jnp.result_type(inputs))
    if m_x is not None and m_x.ndim == 2:
        inputs, m_x = inputs * m_x[:, None, :], None
    return inputs, None if m_x is None and m_h is None else (m_x, m_h)
