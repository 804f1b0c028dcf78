"""The LSTM recurrence with a hand-written gradient: what ``lstm`` runs without a mask.

The same equations as ``lstm_cell``, computed over time-major inputs in a transposed,
feature-major layout (``[4U, B]`` gates), with a ``jax.custom_vjp`` whose backward pass
keeps each step's gate activations and sums the weight gradient over all steps in one
matrix product. Both were chosen for XLA:CPU (``benchmarks/NOTES.md``); tests hold the
outputs and gradients equal to ``lstm_cell``'s under autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import _jax_compat, lstm_cpu
from lstm_jax._vjp import is_zero, primal_values, zeros

__all__ = [
    "in_one_dtype",
    "lstm_unmasked_scan",
    "primal_values",
]

Array = jax.Array
Params = dict[str, Array]

# The batch (on one device) from which the backward scan sums the weight gradient step by
# step; below it, after the scan (see _lstm_scan).
SUM_EACH_STEP_FROM = 64


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
    cell state. Where the weight gradient's sum is taken depends on the batch (on each
    device): from ``SUM_EACH_STEP_FROM`` examples the backward scan carries it, one
    ``[D+U+1, B] x [B, 4U]`` matmul per step reading ``xh`` as the forward wrote it, and no
    step's ``dz`` is stored; below it, where that per-step product is too thin to pay for
    reading and writing the ``[D+U+1, 4U]`` sum, the scan stores each ``dz_t`` and the sum
    and ``d_xs`` are one matmul each over all steps after it (``benchmarks/NOTES.md``).
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
            zeros(xs, (units, steps, batch)),
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
    return _lstm_forward(*primal_values((params, xs, h0, c0)), unroll)


def _lstm_scan_bwd(unroll, residuals, cotangents):
    params, xh, ps, qs, fs = residuals  # [D+U+1, T, B], [T, 4U, B], [T, U, B], [T, U, B]
    # [T, B, U], [B, U], [B, U]; a SymbolicZero for an output nothing depends on, e.g. the
    # per-step outputs when only the last is used: no [T, B, U] of zeros is made and read.
    d_hs, d_h, d_c = cotangents
    steps, units, batch = qs.shape
    input_dim = xh.shape[0] - units - 1
    d_h, d_c = (zeros(ps, (batch, units)) if is_zero(d) else d for d in (d_h, d_c))
    # [dc; dc; dc; dh] is made by a select on the output gate's rows: XLA:CPU fuses a
    # concatenate with its producers into a slow loop.
    output_gate = (np.arange(4) == 3)[:, None, None]  # [4, 1, 1]: the blocks i, f, c, o

    # Below this batch, the weight gradient is summed after the scan (see _lstm_scan).
    sum_each_step = not isinstance(batch, int) or batch >= SUM_EACH_STEP_FROM  # or symbolic

    def body(carry, step):
        dh_next, dc_next, d_kernels = carry  # [U, B], [U, B], [D+U+1, 4U] or None
        dh = dh_next + step["dh_out"] if "dh_out" in step else dh_next
        dc = dc_next + dh * step["q"]
        dz = step["p"] * jnp.where(output_gate, dh[None], dc[None]).reshape(4 * units, batch)
        carry = (params["recurrent_kernel"] @ dz, dc * step["f"])
        if not sum_each_step:
            return (*carry, None), dz
        xh_t = jax.lax.dynamic_index_in_dim(xh, step["t"], axis=1, keepdims=False)  # [D+U+1, B]
        d_kernels += jax.lax.dot_general(xh_t, dz, (((1,), (1,)), ((), ())))
        d_x = params["kernel"] @ dz  # [D, B]; XLA drops it when nothing needs d_xs
        return (*carry, d_kernels), d_x

    steps_in = {"p": ps, "q": qs, "f": fs, "t": jnp.arange(steps)}
    if not is_zero(d_hs):
        steps_in.update(dh_out=jnp.swapaxes(d_hs, 1, 2))  # [T, U, B]
    d_kernels = zeros(ps, (input_dim + units + 1, 4 * units)) if sum_each_step else None
    (dh0, dc0, d_kernels), per_step = jax.lax.scan(
        body, (d_h.T, d_c.T, d_kernels), steps_in, reverse=True, unroll=unroll
    )
    if sum_each_step:
        d_xs = jnp.swapaxes(per_step, 1, 2)  # [T, B, D]
    else:  # per_step is each step's dz: [T, 4U, B]
        d_kernels = jax.lax.dot_general(xh, per_step, (((1, 2), (0, 2)), ((), ())))
        d_xs = jnp.einsum("dg,tgb->tbd", params["kernel"], per_step)
    grads = {
        "kernel": d_kernels[:input_dim],
        "recurrent_kernel": d_kernels[input_dim:-1],
        "bias": d_kernels[-1],
    }
    return {**params, **grads}, d_xs, dh0.T, dc0.T


_lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd, symbolic_zeros=True)


def lstm_unmasked_scan(params: Params, xs: Array, carry: tuple, unroll):
    """``(hs, (h, c))`` of the LSTM over time-major ``xs`` ``[T, B, D]`` from ``carry``
    ``(h0, c0)``: the ``unmasked_scan`` of ``recurrent.CELLS["lstm"]``.

    One dtype inside the custom-gradient scan: the carry's, the inputs' and the parameters'
    promoted (bfloat16 inputs with float32 weights run in float32). The casts sit outside
    it, so autodiff returns each gradient in its own dtype.

    On a CPU, in float32 or bfloat16, the whole sequence runs in ``lstm_cpu``'s kernel
    instead (the same results, faster); ``unroll`` is the scan's alone."""
    params, xs = in_one_dtype(params, xs, carry)
    if lstm_cpu.why_not(params, xs, carry) is None:
        hs, h, c = lstm_cpu.run(params, xs, *carry)
    else:
        hs, h, c = _lstm_scan(params, xs, *carry, unroll)
    return hs, (h, c)


def in_one_dtype(params: Params, xs: Array, carry: tuple) -> tuple[Params, Array]:
    """``params`` and ``xs`` in the carry's dtype, for a custom-gradient scan: the
    parameters also varying as ``xs`` does (``varying_like``)."""
    dtype = carry[0].dtype
    cast = _jax_compat.varying_like({k: v.astype(dtype) for k, v in params.items()}, xs)
    return cast, xs.astype(dtype)
