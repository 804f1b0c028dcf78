"""Recurrent cells as pure functions, and the sequence functions that scan them over time.

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
y_t)``, and holds its equations, in its docstring and its code. The sequence functions
(``lstm``, ``gru``, ``simple_rnn``) scan exactly these cells over time. Without a mask the
LSTM runs ``_lstm_scan``: the same equations, computed transposed for speed, with a
hand-written gradient; tests hold it equal to ``lstm_cell`` and to autodiff.

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

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import Any, TypedDict, Unpack

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from lstm_jax import _jax_compat

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


# --------------------------------------------------------------------------------------
# The LSTM's step as the custom-gradient scan computes it
# --------------------------------------------------------------------------------------


def _lstm_gates(z: Array, gate_axis: int = -1) -> tuple[Array, Array, Array, Array]:
    """``i, f, g, o`` from ``z = x_t W + h_{t-1} U + b``; see ``lstm_cell``.

    ``z`` holds the gate blocks i, f, c, o along ``gate_axis``: ``[B, 4U]`` with the default,
    ``[4U, B]`` with ``gate_axis=0`` (the transposed layout of ``_lstm_scan``).

    The sigmoids are computed as ``sigmoid(x) = (1 + tanh(x / 2)) / 2``, an identity, so
    that one ``tanh`` over all four blocks (the candidate's at scale 1) gives every gate:
    XLA:CPU then runs one elementwise loop instead of three ``exp``/divide ones and a
    ``tanh`` (``benchmarks/NOTES.md``). In float32 the sigmoids stay within 1.6e-7 of the
    exact values (``jax.nn.sigmoid``: 8.9e-8) and every gate within XLA's own ``tanh`` error
    (2.4e-7), over [-30, 30] against float64 (tested).
    """
    units = z.shape[gate_axis] // 4
    shape = [1] * z.ndim
    shape[gate_axis] = 4 * units
    scale = np.repeat(np.array([0.5, 0.5, 1.0, 0.5], np.float32), units).reshape(shape)
    scale = jnp.asarray(scale, z.dtype)
    ti, tf, g, to = jnp.split(jnp.tanh(z * scale), 4, axis=gate_axis)  # [B, U] or [U, B] each
    return (1 + ti) / 2, (1 + tf) / 2, g, (1 + to) / 2


def _lstm_update(z: Array, c_prev: Array, gate_axis: int = -1):
    """The LSTM's state update from ``z``, gate blocks along ``gate_axis``; see ``lstm_cell``.

    Returns ``h, c`` and ``(i, f, g, o, tanh(c))``, from which the custom-gradient scan's
    forward computes what its backward needs.
    """
    i, f, g, o = _lstm_gates(z, gate_axis)
    c = f * c_prev + i * g
    tanh_c = jnp.tanh(c)
    return o * tanh_c, c, (i, f, g, o, tanh_c)


# --------------------------------------------------------------------------------------
# Cells: cell(params, carry, x_t) -> (carry, y_t)
# --------------------------------------------------------------------------------------


def lstm_cell(params: Params, carry: tuple[Array, Array], x_t: Array):
    r"""One LSTM step, with the signature ``jax.lax.scan`` wants.

    With ``W = params["kernel"]``, ``U = params["recurrent_kernel"]``, ``b = params["bias"]``
    each split into four gate blocks in the order i, f, c (written ``g`` below), o::

        i   = sigmoid(x_t W_i + h_{t-1} U_i + b_i)     input gate
        f   = sigmoid(x_t W_f + h_{t-1} U_f + b_f)     forget gate
        g   = tanh   (x_t W_c + h_{t-1} U_c + b_c)     candidate cell state
        o   = sigmoid(x_t W_o + h_{t-1} U_o + b_o)     output gate
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

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
    z_i, z_f, z_c, z_o = jnp.split(_project(x_t, W, b) + h @ U, 4, axis=-1)  # [B, U] each
    i, f, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jax.nn.sigmoid(z_o)
    g = jnp.tanh(z_c)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (h, c), h


def gru_cell(params: Params, carry: Array, x_t: Array):
    r"""One GRU step (Keras ``reset_after=True``, the cuDNN variant), scan signature.

    With ``W = params["kernel"]``, ``U = params["recurrent_kernel"]``, gate blocks z, r, h,
    ``b_x, b_h = params["bias"]``::

        z   = sigmoid(x_t W_z + b_xz + h_{t-1} U_z + b_hz)     update gate
        r   = sigmoid(x_t W_r + b_xr + h_{t-1} U_r + b_hr)     reset gate
        h~  = tanh   (x_t W_h + b_xh + r * (h_{t-1} U_h + b_hh)) candidate
        h_t = z * h_{t-1} + (1 - z) * h~

    The reset gate multiplies the recurrent projection *after* the matmul.

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
    zx = _project(x_t, params["kernel"], params["bias"][0])  # [B, 3U]
    zh = _project(h, params["recurrent_kernel"], params["bias"][1])  # [B, 3U]
    xz, xr, xh = jnp.split(zx, 3, axis=-1)
    hz, hr, hh = jnp.split(zh, 3, axis=-1)
    z = jax.nn.sigmoid(xz + hz)
    r = jax.nn.sigmoid(xr + hr)
    h_tilde = jnp.tanh(xh + r * hh)
    h = z * h + (1 - z) * h_tilde
    return h, h


def simple_rnn_cell(params: Params, carry: Array, x_t: Array):
    r"""One SimpleRNN step, scan signature::

        h_t = tanh(x_t W + h_{t-1} U + b)

    with ``params`` ``{"kernel": [D, U], "recurrent_kernel": [U, U], "bias": [U]}``, the
    carry ``h`` ``[B, U]`` and ``x_t`` ``[B, D]``; returns ``(h_t, h_t)``, each ``[B, U]``.

    >>> import jax, jax.numpy as jnp
    >>> p = init_simple_rnn(jax.random.key(0), input_dim=3, units=5)
    >>> h, y = simple_rnn_cell(p, jnp.zeros((2, 5)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 5)
    """
    h = jnp.tanh(
        _project(x_t, params["kernel"], params["bias"]) + carry @ params["recurrent_kernel"]
    )
    return h, h


# --------------------------------------------------------------------------------------
# The LSTM recurrence with a hand-written gradient
# --------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _lstm_scan(params: Params, xs: Array, h0: Array, c0: Array, unroll=1):
    """Scans the LSTM over time-major ``xs: [T, B, D]``; returns ``(hs, h_T, c_T)``.

    The same equations as ``lstm_cell``, computed transposed, with features leading and
    the batch last (written ``^T``: ``h^T`` is ``[U, B]``)::

        z^T = [W; U; b]^T [x_t; h_{t-1}; 1]^T        [4U, B], gate blocks i, f, c, o as rows
        i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of the four row blocks of z^T
        c_t^T = f * c_{t-1}^T + i * g,   h_t^T = o * tanh(c_t^T)

    Why transposed: the step's matmuls become ``[4U, D+U+1] @ [D+U+1, B]`` (and
    ``[U, 4U] @ [4U, B]`` backwards), whose wide, batch-sized output suits XLA:CPU's kernels
    far better than ``[B, U] @ [U, 4U]`` and ``[B, 4U] @ [4U, U]``, and each gate is a
    contiguous block of rows. Each step writes ``h_{t-1}^T`` between ``x_t^T`` and a row of
    ones in one ``[D+U+1, T, B]`` buffer, ``xh``, so that one matmul serves both kernels and
    the bias, forwards and in the weight gradient (``benchmarks/NOTES.md``).

    The gradient (``_lstm_scan_bwd``), step by step from ``t = T``, with ``dh`` and ``dc`` the
    loss's gradients at ``h_t`` and ``c_t`` (``dc`` starting from what flows back from
    ``c_{t+1}``), in ``lstm_cell``'s letters (batch-major, gate blocks side by side; the code
    holds each transposed, blocks stacked as rows)::

        dc += dh * q_t,                  q_t = o * (1 - tanh(c_t)^2)
        dz_t = p_t * [dc, dc, dc, dh],   p_t = [g i (1 - i), c_{t-1} f (1 - f), i (1 - g^2),
                                                tanh(c_t) o (1 - o)]
        [dW; dU; db] += [x_t, h_{t-1}, 1]^T dz_t
        dh_{t-1} = dz_t U^T,   dc_{t-1} = dc * f

    The forward pass stores each step's ``p_t`` (``[4U, B]``), ``q_t`` and ``f`` (``[U, B]``)
    as it computes the gates, so the backward scan recomputes no activation and holds no
    cell state; it carries ``dh``, ``dc`` and the weight gradients (one ``[D+U+1, B] x [B, 4U]``
    matmul per step, reading ``xh`` as the forward wrote it), so no step's ``dz`` is stored.
    Cotangents that are symbolically zero (outputs the loss does not use) cost nothing.
    ``tests/test_recurrent.py`` holds it equal to autodiff and to ``lstm_cell``.

    Run per device (as ``lstm_jax.training`` does, with ``jax.shard_map``), the sum stays
    on the device until the step's one all-reduce. Called on a batch that XLA partitions
    across devices automatically, each step's partial sums are all-reduced inside the
    loop: correct, but slower (``benchmarks/NOTES.md``).
    """
    return _lstm_forward(params, xs, h0, c0, unroll)[0]


def _lstm_forward(params, xs, h0, c0, unroll):
    """The forward scan: ``(hs, h_T, c_T)`` and the residuals the gradient needs."""
    steps, batch, input_dim = xs.shape
    units = h0.shape[1]
    kernels = [params["kernel"], params["recurrent_kernel"], params["bias"][None]]
    kernels_t = jnp.concatenate(kernels).T  # [4U, D+U+1]
    # xh[:, t] = [x_t; h_{t-1}; 1]^T: x and the ones are written in now, h_{t-1} by step t. Step t
    # reads its block into the matmul only, never into the gate math: XLA:CPU emits slow code
    # for a dynamic slice fused into elementwise work.
    xh = jnp.concatenate(
        [
            jnp.transpose(xs, (2, 0, 1)),
            _zeros(xs, (units, steps, batch)),
            jax.lax.full_like(xs, 1, shape=(1, steps, batch)),
        ]
    )  # [D+U+1, T, B]

    def body(carry, t):
        h, c_prev, xh = carry  # [U, B], [U, B], [D+U+1, T, B]
        xh = jax.lax.dynamic_update_slice(xh, h[:, None], (input_dim, t, 0))
        xh_t = jax.lax.dynamic_index_in_dim(xh, t, axis=1, keepdims=False)  # [D+U+1, B]
        h, c, (i, f, g, o, tanh_c) = _lstm_update(kernels_t @ xh_t, c_prev, gate_axis=0)
        # What the backward step needs, see the docstring of _lstm_scan: p_t [4U, B], q_t, f.
        # (Here a concatenate is as fast as one expression over [4U, B]; not so backwards.)
        p = jnp.concatenate(
            [g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)]
        )
        return (h, c, xh), (p, o * (1 - tanh_c * tanh_c), f)

    (h, c, xh), (ps, qs, fs) = jax.lax.scan(
        body, (h0.T, c0.T, xh), jnp.arange(steps), unroll=unroll
    )  # [T, 4U, B], [T, U, B], [T, U, B]
    hs_t = jnp.concatenate([xh[input_dim:-1, 1:], h[:, None]], axis=1)  # [U, T, B]
    outputs = (jnp.transpose(hs_t, (1, 2, 0)), h.T, c.T)  # [T, B, U], [B, U], [B, U]
    return outputs, (params, xh, ps, qs, fs)


def _lstm_scan_fwd(params, xs, h0, c0, unroll):
    # With symbolic_zeros=True each array arrives as a CustomVJPPrimal(value, perturbed).
    args = jax.tree.map(
        lambda a: a.value, (params, xs, h0, c0), is_leaf=lambda a: isinstance(a, CustomVJPPrimal)
    )
    return _lstm_forward(*args, unroll)


def _lstm_scan_bwd(unroll, residuals, cotangents):
    params, xh, ps, qs, fs = residuals  # [D+U+1, T, B], [T, 4U, B], [T, U, B], [T, U, B]
    # [T, B, U], [B, U], [B, U]; a SymbolicZero for an output nothing depends on, e.g. the
    # per-step outputs when only the last is used: no [T, B, U] of zeros is made and read.
    d_hs, d_h, d_c = cotangents
    steps, units, batch = qs.shape
    input_dim = xh.shape[0] - units - 1
    d_h, d_c = (_zeros(ps, (batch, units)) if _is_zero(d) else d for d in (d_h, d_c))
    # [dc; dc; dc; dh] is made by a select on the output gate's rows: XLA:CPU fuses a
    # concatenate with its producers into a slow loop.
    output_gate = (np.arange(4) == 3)[:, None, None]  # [4, 1, 1]: the blocks i, f, c, o

    def body(carry, step):
        dh_next, dc_next, d_kernels = carry  # [U, B], [U, B], [D+U+1, 4U]
        dh = dh_next + step["dh_out"] if "dh_out" in step else dh_next
        dc = dc_next + dh * step["q"]
        dz = step["p"] * jnp.where(output_gate, dh[None], dc[None]).reshape(4 * units, batch)
        xh_t = jax.lax.dynamic_index_in_dim(xh, step["t"], axis=1, keepdims=False)  # [D+U+1, B]
        d_kernels += jax.lax.dot_general(xh_t, dz, (((1,), (1,)), ((), ())))
        d_x = params["kernel"] @ dz  # [D, B]; XLA drops it when nothing needs d_xs
        return (params["recurrent_kernel"] @ dz, dc * step["f"], d_kernels), d_x

    steps_in = {"p": ps, "q": qs, "f": fs, "t": jnp.arange(steps)}
    if not _is_zero(d_hs):
        steps_in.update(dh_out=jnp.swapaxes(d_hs, 1, 2))  # [T, U, B]
    d_kernels = _zeros(ps, (input_dim + units + 1, 4 * units))
    (dh0, dc0, d_kernels), d_xs = jax.lax.scan(
        body, (d_h.T, d_c.T, d_kernels), steps_in, reverse=True, unroll=unroll
    )
    grads = {
        "kernel": d_kernels[:input_dim],
        "recurrent_kernel": d_kernels[input_dim:-1],
        "bias": d_kernels[-1],
    }
    return {**params, **grads}, jnp.swapaxes(d_xs, 1, 2), dh0.T, dc0.T  # d_xs: [T, B, D]


def _zeros(like: Array, shape: tuple[int, ...], dtype=None) -> Array:
    """Zeros of ``shape``, typed like ``like``: inside ``jax.shard_map``, varying over the
    same mesh axes, as a scan carry that starts from them must be."""
    return jax.lax.full_like(like, 0, dtype, shape)


def _varying_like(tree, like: Array):
    """``tree`` marked as varying over the ``jax.shard_map`` axes that ``like`` varies over.

    Inside ``shard_map`` (``check_vma=True``) a scan's carry must keep its type, so the
    initial states are cast like the inputs; and the LSTM's parameters enter its
    custom-gradient scan with the inputs' type, so that JAX sums their per-device
    gradients over those axes (the transpose of the cast), as it does for any operation
    that mixes replicated parameters with per-device inputs. Elsewhere nothing varies and
    ``tree`` comes back as it was.
    """

    def cast(x):
        missing = tuple(sorted(_jax_compat.varying_axes(like) - _jax_compat.varying_axes(x)))
        return _jax_compat.pvary(x, missing) if missing else x

    return jax.tree.map(cast, tree)


def _is_zero(cotangent) -> bool:
    return isinstance(cotangent, SymbolicZero)


_lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd, symbolic_zeros=True)


# --------------------------------------------------------------------------------------
# The registry of cells
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """A recurrent cell, as the sequence functions, the Flax layers, the trainer and
    ``train.py`` know it: adding a cell means adding its step and initialiser and one entry
    in ``CELLS``.

    Attributes:
      name: how ``train.py --cell`` and ``nn.Classifier(cell=...)`` name it, e.g. ``"lstm"``.
      layer: Keras's (and ``lstm_jax.nn``'s) layer name, e.g. ``"LSTM"``.
      step: ``step(params, carry, x_t) -> (carry, y_t)``, the signature ``jax.lax.scan`` wants.
      init: ``init(key, input_dim, units, *, dtype)``, Keras's initialisers.
      gates: gate blocks in each kernel (``kernel [D, gates * U]``).
      state: the names of the carry's arrays, ``("h", "c")`` or ``("h",)``; ``h`` first.
      biases: bias rows (2 for Keras's GRU with ``reset_after``: ``bias [2, 3U]``).
      unmasked_scan: ``(params, xs, carry, unroll) -> (hs, carry)``, a faster scan with the
        same results for inputs without a mask, or ``None``.
    """

    name: str
    layer: str
    step: Callable
    init: Callable
    gates: int
    state: tuple[str, ...]
    biases: int = 1
    unmasked_scan: Callable | None = None

    def bias_shape(self, units: int) -> tuple[int, ...]:
        size = self.gates * units
        return (size,) if self.biases == 1 else (self.biases, size)


def _lstm_unmasked_scan(params: Params, xs: Array, carry: tuple, unroll):
    # One dtype inside the custom-gradient scan: the carry's, the inputs' and the parameters'
    # promoted (bfloat16 inputs with float32 weights run in float32). The casts sit outside
    # it, so autodiff returns each gradient in its own dtype.
    dtype = carry[0].dtype
    cast = _varying_like({k: v.astype(dtype) for k, v in params.items()}, xs)
    hs, h, c = _lstm_scan(cast, xs.astype(dtype), *carry, unroll)
    return hs, (h, c)


CELLS: dict[str, Cell] = {
    cell.name: cell
    for cell in (
        Cell(
            name="lstm",
            layer="LSTM",
            step=lstm_cell,
            init=init_lstm,
            gates=4,
            state=("h", "c"),
            unmasked_scan=_lstm_unmasked_scan,
        ),
        Cell(
            name="gru", layer="GRU", step=gru_cell, init=init_gru, gates=3, state=("h",), biases=2
        ),
        Cell(
            name="simple_rnn",
            layer="SimpleRNN",
            step=simple_rnn_cell,
            init=init_simple_rnn,
            gates=1,
            state=("h",),
        ),
    )
}


# --------------------------------------------------------------------------------------
# Checking what callers pass
# --------------------------------------------------------------------------------------


def _check_params(cell: Cell, params: Params) -> int:
    """Validates the parameter dict's keys and shapes; returns ``U``."""
    name = cell.name
    if not isinstance(params, dict) or not {"kernel", "recurrent_kernel", "bias"} <= set(params):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"{name}: params must be a dict with 'kernel', 'recurrent_kernel' and 'bias' "
            f"(as returned by init_{name}); got {got}"
        )
    gates = cell.gates
    kernel, recurrent = jnp.shape(params["kernel"]), jnp.shape(params["recurrent_kernel"])
    if len(recurrent) != 2 or recurrent[1] != gates * recurrent[0]:
        raise ValueError(
            f"{name}: recurrent_kernel must be [units, {gates} * units]; got {recurrent}"
        )
    units = recurrent[0]
    bias_shape = cell.bias_shape(units)
    if len(kernel) != 2 or kernel[1] != gates * units:
        raise ValueError(f"{name}: kernel must be [input_dim, {gates * units}]; got {kernel}")
    if jnp.shape(params["bias"]) != bias_shape:
        raise ValueError(
            f"{name}: bias must be {list(bias_shape)}; got {jnp.shape(params['bias'])}"
        )
    return units


def _check_inputs(name: str, params: Params, inputs: Array, mask: Array | None) -> None:
    shape = jnp.shape(inputs)
    if len(shape) != 3:
        raise ValueError(
            f"{name}: inputs must be rank 3, [batch, time, features]; got shape {shape}. "
            "For one sequence add a batch axis: x[None]."
        )
    dtype = jnp.result_type(inputs)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name}: inputs must be floating point (float32, bfloat16, ...); got {dtype}. "
            "Cast first, e.g. x.astype(jnp.float32) / 255."
        )
    input_dim = jnp.shape(params["kernel"])[0]
    if shape[2] != input_dim:
        raise ValueError(
            f"{name}: inputs have {shape[2]} features but the kernel expects {input_dim} "
            f"(kernel shape {jnp.shape(params['kernel'])}); inputs shape {shape}"
        )
    if shape[1] == 0:
        raise ValueError(f"{name}: inputs must have at least one time step; got shape {shape}")
    if mask is not None and jnp.shape(mask) != shape[:2]:
        raise ValueError(
            f"{name}: mask must be [batch, time] = {list(shape[:2])}; got {jnp.shape(mask)}"
        )


def _initial_carry(cell: Cell, initial_state, batch: int, units: int, dtype) -> tuple:
    expected = len(cell.state)
    if initial_state is None:
        zeros = jnp.zeros((batch, units), dtype)
        return (zeros,) * expected
    states = tuple(initial_state) if isinstance(initial_state, (tuple, list)) else (initial_state,)
    if len(states) != expected:
        what = f"({', '.join(cell.state)})" if expected > 1 else cell.state[0]
        raise ValueError(f"{cell.name}: initial_state must be {what}; got {len(states)} arrays")
    for s in states:
        if jnp.shape(s) != (batch, units):
            raise ValueError(
                f"{cell.name}: each initial state must be [batch, units] = {[batch, units]}; "
                f"got {jnp.shape(s)}"
            )
    return tuple(jnp.asarray(s, dtype) for s in states)


# --------------------------------------------------------------------------------------


class SequenceOptions(TypedDict, total=False):
    """The options of ``lstm``, ``gru`` and ``simple_rnn`` (and ``run_cell``), as Keras's
    recurrent layers have them.

    Attributes:
      return_sequences: return the output of every step, ``[batch, time, units]``, instead
        of the last one, ``[batch, units]``.
      return_state: also return the final state: ``(output, h)``, or ``(output, h, c)`` for
        the LSTM.
      initial_state: ``h`` (or ``(h, c)`` for the LSTM), each ``[batch, units]``; zeros when
        ``None``.
      go_backwards: read the sequence from its end; outputs come in that (reversed) order,
        as in Keras.
      mask: bool ``[batch, time]``; a masked step keeps the previous state and repeats the
        previous output (the initial ``h``, zeros by default, before any valid step), as
        Keras 3 does. A row with no valid step returns its initial state.
      unroll: ``jax.lax.scan``'s unroll factor (``True`` unrolls fully).
    """

    return_sequences: bool
    return_state: bool
    initial_state: Any
    go_backwards: bool
    mask: Array | None
    unroll: int | bool


def run_cell(
    cell: Cell,
    params: Params,
    inputs: Array,
    *,
    return_sequences: bool = False,
    return_state: bool = False,
    initial_state=None,
    go_backwards: bool = False,
    mask: Array | None = None,
    unroll: int | bool = 1,
):
    """Runs ``cell.step`` over ``inputs`` ``[batch, time, features]`` (floating point) with
    ``jax.lax.scan``, as Keras's recurrent layers do; ``lstm``, ``gru`` and ``simple_rnn``
    are this for their cell. ``params`` are as ``cell.init`` returns them; the options are
    ``SequenceOptions``.

    The carry is handled here as a tuple whose first element is ``h``, the step's output.
    Without a mask, ``cell.unmasked_scan`` (where the cell has one) replaces the scan.

    Returns:
      the output, or ``(output, *state)`` when ``return_state``.

    Raises:
      ValueError: inputs not rank 3 or not floating point, features that do not match the
        kernel, a mask or initial state of the wrong shape.
    """
    units = _check_params(cell, params)
    _check_inputs(cell.name, params, inputs, mask)
    batch = jnp.shape(inputs)[0]
    dtype = jnp.result_type(inputs, params["kernel"])
    carry = _initial_carry(cell, initial_state, batch, units, dtype)
    if len(cell.state) > 1:  # the step's own carry: (h, c) for the LSTM, h for the others
        wrap, unwrap = (lambda carry: carry), (lambda carry: carry)
    else:
        wrap, unwrap = (lambda carry: carry[0]), (lambda h: (h,))

    xs = jnp.swapaxes(inputs, 0, 1)  # [T, B, D]: scan runs over the leading axis
    if go_backwards:
        xs = xs[::-1]
    carry = _varying_like(carry, xs)  # inside shard_map, the scan's carry varies as xs does

    if mask is None and cell.unmasked_scan is not None:
        hs, carry = cell.unmasked_scan(params, xs, carry, unroll)
    elif mask is None:

        def body(carry, x_t):
            carry, h = cell.step(params, wrap(carry), x_t)
            return unwrap(carry), h

        carry, hs = jax.lax.scan(body, carry, xs, unroll=unroll)  # hs: [T, B, U]
    else:
        m = jnp.swapaxes(jnp.asarray(mask, bool), 0, 1)[:, :, None]  # [T, B, 1]
        if go_backwards:
            m = m[::-1]

        def body(carry, step):
            x_t, m_t = step
            new = unwrap(cell.step(params, wrap(carry), x_t)[0])
            # A masked step keeps the previous state; its output repeats h_{t-1}.
            carry = tuple(jnp.where(m_t, n, o) for n, o in zip(new, carry, strict=True))
            return carry, carry[0]

        carry, hs = jax.lax.scan(body, carry, (xs, m), unroll=unroll)

    outputs = jnp.swapaxes(hs, 0, 1) if return_sequences else carry[0]
    if return_state:
        return (outputs, *carry)
    return outputs


def lstm(params: Params, inputs: Array, **options: Unpack[SequenceOptions]):
    """Runs ``lstm_cell`` over ``[batch, time, features]`` with ``jax.lax.scan``, as Keras's
    ``LSTM`` layer does; ``options`` are ``SequenceOptions``, ``params`` from ``init_lstm``.

    Without a mask the scan runs the same equations in a transposed, feature-major layout
    with a hand-written gradient (``jax.custom_vjp``), both chosen for speed; its outputs and
    gradients equal ``lstm_cell``'s and autodiff's.

    >>> import jax, jax.numpy as jnp
    >>> p = init_lstm(jax.random.key(0), input_dim=28, units=50)
    >>> x = jnp.ones((4, 28, 28))
    >>> lstm(p, x).shape, lstm(p, x, return_sequences=True).shape
    ((4, 50), (4, 28, 50))
    >>> out, h, c = lstm(p, x, return_state=True)
    >>> bool((out == h).all())
    True
    """
    return run_cell(CELLS["lstm"], params, inputs, **options)


def gru(params: Params, inputs: Array, **options: Unpack[SequenceOptions]):
    """Runs ``gru_cell`` over ``[batch, time, features]`` with ``jax.lax.scan``, as Keras's
    ``GRU`` layer (``reset_after=True``) does; ``options`` are ``SequenceOptions``,
    ``params`` from ``init_gru``.

    >>> import jax, jax.numpy as jnp
    >>> p = init_gru(jax.random.key(0), input_dim=28, units=50)
    >>> gru(p, jnp.ones((4, 28, 28))).shape
    (4, 50)
    """
    return run_cell(CELLS["gru"], params, inputs, **options)


def simple_rnn(params: Params, inputs: Array, **options: Unpack[SequenceOptions]):
    """Runs ``simple_rnn_cell`` over ``[batch, time, features]`` with ``jax.lax.scan``, as
    Keras's ``SimpleRNN`` layer does; ``options`` are ``SequenceOptions``, ``params`` from
    ``init_simple_rnn``.

    >>> import jax, jax.numpy as jnp
    >>> p = init_simple_rnn(jax.random.key(0), input_dim=28, units=50)
    >>> simple_rnn(p, jnp.ones((4, 28, 28)), return_sequences=True).shape
    (4, 28, 50)
    """
    return run_cell(CELLS["simple_rnn"], params, inputs, **options)
