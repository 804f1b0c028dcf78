"""Recurrent cells as pure functions, with Keras's initialisers.

Shapes follow one convention throughout: ``[batch, time, features]`` for sequences, with
``B`` batch, ``T`` time, ``D`` input features and ``U`` units in the comments.

Parameters are plain dicts in Keras's layout, so weights move to and from
``keras.layers.LSTM`` / ``GRU`` / ``SimpleRNN`` by name:

=============  ==================  =====================  ==========  ===========
cell           ``kernel``          ``recurrent_kernel``   ``bias``    gate order
=============  ==================  =====================  ==========  ===========
LSTM           ``[D, 4U]``         ``[U, 4U]``            ``[4U]``    i, f, c, o
GRU            ``[D, 3U]``         ``[U, 3U]``            ``[2, 3U]`` z, r, h
SimpleRNN      ``[D, U]``          ``[U, U]``             ``[U]``     --
=============  ==================  =====================  ==========  ===========

Each cell has the signature ``jax.lax.scan`` wants, ``cell(params, carry, x_t) -> (carry,
y_t)``, and holds its equations, in its docstring and its code. The sequence functions of
``lstm_jax.recurrent`` (``lstm``, ``gru``, ``simple_rnn``) scan exactly these cells over
time. Without a mask the LSTM runs ``lstm_jax.lstm_scan``, and the GRU below 64 examples a
device ``lstm_jax.gru_scan``: the same equations, computed transposed for speed, with a
hand-written gradient; tests hold them equal to ``lstm_cell`` and ``gru_cell`` and to
autodiff.

The cells project each step's input inside the step rather than computing ``x W + b`` for
all steps before the scan: XLA:CPU would fuse each step's slice of a precomputed projection
into the gate math, where a dynamic slice runs slowly (``benchmarks/NOTES.md``).

A note for readers of the Keras lesson this project grew from: its sketch of the gate
equations reuses the input gate's weights for every gate and a sigmoid for the candidate.
The equations here are the textbook ones (Hochreiter & Schmidhuber 1997, with the forget
gate of Gers et al. 2000), exactly as Keras computes them: each gate has its own weights,
and the candidate ``g`` uses tanh.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "Array",
    "Params",
    "check_sizes",
    "init_lstm",
    "init_gru",
    "init_simple_rnn",
    "lstm_cell",
    "gru_cell",
    "simple_rnn_cell",
]

Array = jax.Array
Params = dict[str, Array]

_glorot_uniform = jax.nn.initializers.glorot_uniform()
_orthogonal = jax.nn.initializers.orthogonal()


def _kernels(key: Array, input_dim: int, units: int, gates: int, dtype: Any):
    """Keras's defaults: glorot-uniform ``[D, gU]`` kernel, orthogonal ``[U, gU]`` recurrent
    kernel. Drawn in float32 (the QR behind ``orthogonal`` has no bfloat16 kernel on CPU)
    and then cast to ``dtype``."""
    input_dim, units = check_sizes(input_dim, units)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating-point dtype (e.g. jnp.float32); got {dtype!r}")
    k_kernel, k_recurrent = jax.random.split(key)
    kernel = _glorot_uniform(k_kernel, (input_dim, gates * units), jnp.float32)
    recurrent_kernel = _orthogonal(k_recurrent, (units, gates * units), jnp.float32)
    return {"kernel": kernel.astype(dtype), "recurrent_kernel": recurrent_kernel.astype(dtype)}


# --------------------------------------------------------------------------------------
# Initialisation (Keras defaults)
# --------------------------------------------------------------------------------------


def check_sizes(input_dim: int, units: int) -> tuple[int, int]:
    """``(input_dim, units)`` as Python ints, if both are positive integers (NumPy's too).

    Raises:
      ValueError: names the size that is not.
    """
    sizes = []
    for name, value in (("input_dim", input_dim), ("units", units)):
        try:
            size = operator.index(value) if not isinstance(value, bool) else None
        except TypeError:
            size = None
        if size is None or size <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
        sizes.append(size)
    return sizes[0], sizes[1]


def init_lstm(
    key: Array,
    input_dim: int,
    units: int,
    *,
    unit_forget_bias: bool = True,
    dtype: Any = jnp.float32,
) -> Params:
    """LSTM parameters with Keras's default initialisers.

    Args:
      key: a ``jax.random`` key.
      input_dim: ``D``, features per time step.
      units: ``U``, the size of ``h`` and ``c``.
      unit_forget_bias: set the forget gate's bias to 1 (Keras's default), so the cell
        remembers by default at the start of training.
      dtype: parameter dtype.

    Returns:
      ``{"kernel": [D, 4U], "recurrent_kernel": [U, 4U], "bias": [4U]}`` with gate blocks in
      the order i, f, c, o: glorot-uniform kernel, orthogonal recurrent kernel (over the
      whole ``[U, 4U]`` matrix), zero bias except ones in the forget block when
      ``unit_forget_bias``.

    >>> import jax
    >>> p = init_lstm(jax.random.key(0), input_dim=28, units=50)
    >>> {k: v.shape for k, v in p.items()}
    {'kernel': (28, 200), 'recurrent_kernel': (50, 200), 'bias': (200,)}
    """
    params = _kernels(key, input_dim, units, 4, dtype)
    bias = jnp.zeros((4 * units,), dtype)
    if unit_forget_bias:
        bias = bias.at[units : 2 * units].set(1)
    return {**params, "bias": bias}


def init_gru(key: Array, input_dim: int, units: int, *, dtype: Any = jnp.float32) -> Params:
    """GRU parameters (Keras ``reset_after=True``) with Keras's default initialisers.

    Returns ``{"kernel": [D, 3U], "recurrent_kernel": [U, 3U], "bias": [2, 3U]}``, gate
    blocks z, r, h; ``bias[0]`` is added to the input projection and ``bias[1]`` to the
    recurrent one.
    """
    return {**_kernels(key, input_dim, units, 3, dtype), "bias": jnp.zeros((2, 3 * units), dtype)}


def init_simple_rnn(key: Array, input_dim: int, units: int, *, dtype: Any = jnp.float32) -> Params:
    """SimpleRNN parameters: ``{"kernel": [D, U], "recurrent_kernel": [U, U], "bias": [U]}``."""
    return {**_kernels(key, input_dim, units, 1, dtype), "bias": jnp.zeros((units,), dtype)}


def _project(x: Array, kernel: Array, bias: Array) -> Array:
    """``x W + b`` for ``x: [..., D]``, with the bias broadcast explicitly (no implicit
    rank promotion, so it also runs under ``jax_numpy_rank_promotion="raise"``)."""
    z = x @ kernel
    return z + jnp.reshape(bias, (1,) * (z.ndim - 1) + bias.shape)


def _dropped(v: Array, kernel: Array, mask: Array | None, gates: int) -> Array:
    """``v W`` with dropout's mask on ``v``: none; one ``[B, D]`` mask for every gate block
    of ``W``; or ``[gates, B, D]``, one for each block (Keras's masks with recurrent
    dropout)."""
    if mask is None:
        return v @ kernel
    if mask.ndim == 2:
        return (v * mask) @ kernel
    blocks = jnp.split(kernel, gates, axis=-1)
    return jnp.concatenate([(v * mask[g]) @ blocks[g] for g in range(gates)], axis=-1)


# --------------------------------------------------------------------------------------
# Cells: cell(params, carry, x_t) -> (carry, y_t)
# --------------------------------------------------------------------------------------


def lstm_cell(params: Params, carry: tuple[Array, Array], x_t: Array, masks=None):
    r"""One LSTM step, with the signature ``jax.lax.scan`` wants.

    With ``W = params["kernel"]``, ``U = params["recurrent_kernel"]``, ``b = params["bias"]``
    each split into four gate blocks in the order i, f, c (written ``g`` below), o::

        i   = sigmoid(x_t W_i + h_{t-1} U_i + b_i)     input gate
        f   = sigmoid(x_t W_f + h_{t-1} U_f + b_f)     forget gate
        g   = tanh   (x_t W_c + h_{t-1} U_c + b_c)     candidate cell state
        o   = sigmoid(x_t W_o + h_{t-1} U_o + b_o)     output gate
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    With dropout (training), ``masks = (m_x, m_h)``: ``x_t W_i`` is ``(x_t * m_x_i) W_i`` and
    ``h_{t-1} U_i`` is ``(h_{t-1} * m_h_i) U_i``, and so for each gate, ``c_{t-1}`` and the
    carried ``h_{t-1}`` untouched, as Keras 3 computes it; each mask is ``[B, D]`` (``[B,
    U]``), one for all gates, or ``[4, B, D]``, one per gate; ``None`` drops nothing
    (``recurrent.dropout_masks`` draws them, once per sequence).

    No constant is added to the forget gate here: Keras's ``unit_forget_bias`` lives in the
    initial value of ``b_f`` (see ``init_lstm``). ``lstm`` without a mask computes the same
    equations in ``_lstm_scan``, arranged for speed; tests hold the two equal.

    Args:
      params: ``{"kernel": [D, 4U], "recurrent_kernel": [U, 4U], "bias": [4U]}``.
      carry: ``(h, c)``, each ``[B, U]``.
      x_t: ``[B, D]``, one time step.

    Returns:
      ``((h_t, c_t), h_t)``, each ``[B, U]``.

    >>> import jax, jax.numpy as jnp
    >>> p = init_lstm(jax.random.key(0), input_dim=3, units=5)
    >>> carry = (jnp.zeros((2, 5)), jnp.zeros((2, 5)))
    >>> (h, c), y = lstm_cell(p, carry, jnp.ones((2, 3)))
    >>> h.shape, c.shape, bool((y == h).all())
    ((2, 5), (2, 5), True)
    """
    h, c = carry
    W, U, b = params["kernel"], params["recurrent_kernel"], params["bias"]
    if masks is None:
        z = _project(x_t, W, b) + h @ U  # [B, 4U]
    else:
        m_x, m_h = masks
        z = _dropped(x_t, W, m_x, 4) + b[None, :] + _dropped(h, U, m_h, 4)
    z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)  # [B, U] each
    i, f, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jax.nn.sigmoid(z_o)
    g = jnp.tanh(z_c)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (h, c), h


def gru_cell(params: Params, carry: Array, x_t: Array, masks=None):
    r"""One GRU step (Keras ``reset_after=True``, the cuDNN variant), scan signature.

    With ``W = params["kernel"]``, ``U = params["recurrent_kernel"]``, gate blocks z, r, h,
    ``b_x, b_h = params["bias"]``::

        z   = sigmoid(x_t W_z + b_xz + h_{t-1} U_z + b_hz)     update gate
        r   = sigmoid(x_t W_r + b_xr + h_{t-1} U_r + b_hr)     reset gate
        h~  = tanh   (x_t W_h + b_xh + r * (h_{t-1} U_h + b_hh)) candidate
        h_t = z * h_{t-1} + (1 - z) * h~

    The reset gate multiplies the recurrent projection *after* the matmul. With dropout,
    ``masks = (m_x, m_h)`` multiply ``x_t`` and ``h_{t-1}`` before each gate's projection
    (``[B, D]`` for all gates, or ``[3, B, D]`` one per gate); ``h_t`` mixes the unmasked
    ``h_{t-1}``, as Keras 3 does.

    Args:
      params: ``{"kernel": [D, 3U], "recurrent_kernel": [U, 3U], "bias": [2, 3U]}``.
      carry: ``h``, ``[B, U]``.
      x_t: ``[B, D]``.

    Returns:
      ``(h_t, h_t)``, each ``[B, U]``.

    >>> import jax, jax.numpy as jnp
    >>> p = init_gru(jax.random.key(0), input_dim=3, units=5)
    >>> h, y = gru_cell(p, jnp.zeros((2, 5)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 5)
    """
    h = carry
    if masks is None:
        zx = _project(x_t, params["kernel"], params["bias"][0])  # [B, 3U]
        zh = _project(h, params["recurrent_kernel"], params["bias"][1])  # [B, 3U]
    else:
        m_x, m_h = masks
        zx = _dropped(x_t, params["kernel"], m_x, 3) + params["bias"][0][None, :]
        zh = _dropped(h, params["recurrent_kernel"], m_h, 3) + params["bias"][1][None, :]
    xz, xr, xh = jnp.split(zx, 3, axis=-1)
    hz, hr, hh = jnp.split(zh, 3, axis=-1)
    z = jax.nn.sigmoid(xz + hz)
    r = jax.nn.sigmoid(xr + hr)
    h_tilde = jnp.tanh(xh + r * hh)
    h = z * h + (1 - z) * h_tilde
    return h, h


def simple_rnn_cell(params: Params, carry: Array, x_t: Array, masks=None):
    r"""One SimpleRNN step, scan signature::

        h_t = tanh(x_t W + h_{t-1} U + b)

    or, with dropout's ``masks = (m_x, m_h)`` (``[B, D]``, ``[B, U]``),
    ``tanh((x_t * m_x) W + (h_{t-1} * m_h) U + b)``; with ``params`` ``{"kernel": [D, U],
    "recurrent_kernel": [U, U], "bias": [U]}``, the carry ``h`` ``[B, U]`` and ``x_t`` ``[B,
    D]``; returns ``(h_t, h_t)``, each ``[B, U]``.

    >>> import jax, jax.numpy as jnp
    >>> p = init_simple_rnn(jax.random.key(0), input_dim=3, units=5)
    >>> h, y = simple_rnn_cell(p, jnp.zeros((2, 5)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 5)
    """
    if masks is not None:
        x_t, carry = (v if m is None else v * m for v, m in zip((x_t, carry), masks, strict=True))
    h = jnp.tanh(
        _project(x_t, params["kernel"], params["bias"]) + carry @ params["recurrent_kernel"]
    )
    return h, h
