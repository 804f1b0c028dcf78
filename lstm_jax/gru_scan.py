"""The GRU recurrence with a hand-written gradient: what ``gru`` runs without a mask where
the CPU kernel (``lstm_cpu.run_gru``) does not.

The same equations as ``gru_cell`` (Keras's ``reset_after=True``), computed over time-major
inputs in the transposed, feature-major layout of ``lstm_scan`` (``[3U, B]`` gates), with a
``jax.custom_vjp`` whose backward pass keeps each step's gate derivatives and sums every
weight gradient over all steps in one matrix product after its scan. That pays below
``CUSTOM_GRADIENT_BELOW`` examples (on each device), where autodiff's per-step weight
gradient products are too thin; from there ``gru_cell`` under ``lax.scan`` and autodiff is
faster, and runs (``benchmarks/NOTES.md``). Tests hold the outputs and gradients equal to
``gru_cell``'s under autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lstm_jax import lstm_cpu
from lstm_jax._vjp import is_zero, primal_values, zeros
from lstm_jax.cells import gru_cell
from lstm_jax.lstm_scan import in_one_dtype

__all__ = ["CUSTOM_GRADIENT_BELOW", "gru_unmasked_scan"]

Array = jax.Array
Params = dict[str, Array]

# The batch (on one device) below which the GRU's scan uses this hand-written gradient;
# from it, autodiff's scan over gru_cell. The CPU kernel, where it runs, serves every batch.
CUSTOM_GRADIENT_BELOW = 64


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gru_scan(params: Params, xs: Array, h0: Array, unroll=1):
    """Scans the GRU over time-major ``xs: [T, B, D]``; returns ``(hs, h_T)``.

    Transposed (``^T``: features leading, the batch last), with ``W, U`` the kernels and
    ``b_x, b_h`` the bias rows, gate blocks z, r, n as row blocks of ``[3U, B]``::

        a_t^T = W^T x_t^T + b_x             for every step at once, before the scan
        e_t^T = U^T h_{t-1}^T + b_h         one [3U, U] @ [U, B] matmul per step
        z = sigmoid(a_z + e_z),  r = sigmoid(a_r + e_r),  n = tanh(a_n + r * e_n)
        h_t = z * h_{t-1} + (1 - z) * n

    The gradient (``_gru_scan_bwd``), step by step from ``t = T``, with ``dh`` the loss's
    gradient at ``h_t`` (what flows back from ``h_{t+1}`` included)::

        da = [dh * s_z, dh * s_n * s_r, dh * s_n]      the pre-activations' gradients
        de = [da_z, da_r, da_n * r]
        dh_{t-1} = dh * z + U de

    with ``s_z = (h_{t-1} - n) z (1 - z)``, ``s_n = (1 - z)(1 - n^2)``, ``s_r = e_n r (1 - r)``
    stored by the forward pass with ``r`` and ``z`` (``[5U, B]`` a step). The scan stores
    each ``da``; after it, ``dW = sum_t x_t^T da_t``, ``dU = sum_t h_{t-1}^T de_t``, the
    biases' sums and ``d_xs`` are one matrix product or sum each over all steps.
    """
    return _gru_forward(params, xs, h0, unroll)[0]


def _gru_forward(params, xs, h0, unroll):
    """The forward scan: ``(hs, h_T)`` and the residuals the gradient needs."""
    bias = params["bias"]
    a = jnp.einsum("tbd,dg->tgb", xs, params["kernel"]) + bias[0][None, :, None]  # [T, 3U, B]
    kernel_t = params["recurrent_kernel"].T  # [3U, U]
    b_h = bias[1][:, None]  # [3U, 1]

    def body(h, a_t):  # h: [U, B]
        e = kernel_t @ h + b_h  # [3U, B]
        a_z, a_r, a_n = jnp.split(a_t, 3)
        e_z, e_r, e_n = jnp.split(e, 3)
        z, r = jax.nn.sigmoid(a_z + e_z), jax.nn.sigmoid(a_r + e_r)
        n = jnp.tanh(a_n + r * e_n)
        h_new = z * h + (1 - z) * n
        saved = jnp.concatenate(
            [(h - n) * z * (1 - z), (1 - z) * (1 - n * n), e_n * r * (1 - r), r, z]
        )  # [5U, B]
        return h_new, (h_new, saved)

    h, (hs_t, saved) = jax.lax.scan(body, h0.T, a, unroll=unroll)  # [T, U, B], [T, 5U, B]
    h_prev = jnp.concatenate([h0.T[None], hs_t[:-1]])  # [T, U, B]
    return (jnp.swapaxes(hs_t, 1, 2), h.T), (params, xs, h_prev, saved)


def _gru_scan_fwd(params, xs, h0, unroll):
    return _gru_forward(*primal_values((params, xs, h0)), unroll)


def _gru_scan_bwd(unroll, residuals, cotangents):
    params, xs, h_prev, saved = residuals  # [T, B, D], [T, U, B], [T, 5U, B]
    d_hs, d_h = cotangents  # [T, B, U], [B, U]; a SymbolicZero for an output not used
    steps, units, batch = h_prev.shape
    d_h = zeros(saved, (batch, units)) if is_zero(d_h) else d_h
    kernel = params["recurrent_kernel"]  # [U, 3U]

    def body(dh_next, step):
        dh = dh_next + step["dh_out"] if "dh_out" in step else dh_next
        s_z, s_n, s_r, r, z = jnp.split(step["saved"], 5)
        da_n = dh * s_n
        da = jnp.concatenate([dh * s_z, da_n * s_r, da_n])  # [3U, B]
        de = jnp.concatenate([da[: 2 * units], da_n * r])
        return dh * z + kernel @ de, da

    steps_in = {"saved": saved}
    if not is_zero(d_hs):
        steps_in.update(dh_out=jnp.swapaxes(d_hs, 1, 2))  # [T, U, B]
    dh0, das = jax.lax.scan(body, d_h.T, steps_in, reverse=True, unroll=unroll)  # [T, 3U, B]
    r = saved[:, 3 * units : 4 * units]  # [T, U, B]
    des = jnp.concatenate([das[:, : 2 * units], das[:, 2 * units :] * r], axis=1)
    grads = {
        "kernel": jnp.einsum("tbd,tgb->dg", xs, das),
        "recurrent_kernel": jnp.einsum("tub,tgb->ug", h_prev, des),
        "bias": jnp.stack([das.sum(axis=(0, 2)), des.sum(axis=(0, 2))]),
    }
    d_xs = jnp.einsum("dg,tgb->tbd", params["kernel"], das)
    return {**params, **grads}, d_xs, dh0.T


_gru_scan.defvjp(_gru_scan_fwd, _gru_scan_bwd, symbolic_zeros=True)


def gru_unmasked_scan(params: Params, xs: Array, carry: tuple, unroll):
    """``(hs, (h,))`` of the GRU over time-major ``xs`` ``[T, B, D]`` from ``carry`` ``(h0,)``:
    the ``unmasked_scan`` of ``recurrent.CELLS["gru"]``.

    On a CPU, in float32 or bfloat16, the whole sequence runs in ``lstm_cpu``'s kernel (the
    same results, faster). Elsewhere, below ``CUSTOM_GRADIENT_BELOW`` examples (a concrete
    batch), the scan with the hand-written gradient, in one dtype as the LSTM's is
    (``lstm_scan.in_one_dtype``); from there, ``gru_cell`` under ``lax.scan`` and autodiff.
    ``unroll`` is the scans' alone."""
    cast, cast_xs = in_one_dtype(params, xs, carry)
    if lstm_cpu.why_not(cast, cast_xs, carry) is None:
        hs, h = lstm_cpu.run_gru(cast, cast_xs, carry[0])
    elif isinstance(xs.shape[1], int) and xs.shape[1] < CUSTOM_GRADIENT_BELOW:
        hs, h = _gru_scan(cast, cast_xs, carry[0], unroll)
    else:
        h, hs = jax.lax.scan(functools.partial(gru_cell, params), carry[0], xs, unroll=unroll)
    return hs, (h,)
