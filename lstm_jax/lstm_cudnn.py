"""The LSTM through cuDNN on NVIDIA GPUs (``jax.experimental.rnn.lstm``), as Keras 3 runs it.

cuDNN computes the textbook LSTM of ``lstm_jax.cells.lstm_cell`` over a whole sequence in
one kernel, forwards and backwards. Its parameters are Keras's in another layout: with
``kernel [D, 4U]``, ``recurrent_kernel [U, 4U]`` and ``bias [4U]`` in Keras's gate order
``i, f, c, o`` (cuDNN's ``i, f, g, o``: ``g`` is Keras's candidate ``c``), cuDNN takes one
flat vector ``[W_ih, W_hh, b_ih, b_hh]`` with ``W_ih = kernel^T [4U, D]``,
``W_hh = recurrent_kernel^T [4U, U]``, ``b_ih = bias`` and ``b_hh = 0`` (cuDNN adds two
biases where Keras has one). ``cudnn_weights`` is that conversion, the only one.

cuDNN reads each sequence up to its length and nothing after it, which is Keras's mask when
the mask is right-padded (each row's valid steps first). ``run`` gives what the scan gives
(``lstm_jax.recurrent.run_cell``) for such a mask: after a row's length, the outputs repeat
its last one; read backwards (``go_backwards``), the padding comes first and repeats the
initial ``h``; a row of length 0 keeps its initial state. Shapes: ``[batch, time, features]``,
``B``, ``T``, ``D``, ``U`` as in ``lstm_jax.recurrent``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp

from lstm_jax import _jax_compat
from lstm_jax.cells import Array, Params

__all__ = [
    "USE_CUDNN",
    "cudnn_weights",
    "is_portable",
    "portable",
    "why_not",
    "right_padded",
    "run",
]

USE_CUDNN = ("auto", True, False)

_PORTABLE = contextvars.ContextVar("lstm_jax_portable", default=False)


@contextlib.contextmanager
def portable() -> Iterator[None]:
    """Inside it, ``use_cudnn="auto"`` scans even on a GPU: what is traced there becomes a
    program for any platform (``jax.export`` for several), which cuDNN's kernel would tie to
    an NVIDIA GPU and to concrete shapes."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def is_portable() -> bool:
    """Whether ``portable()`` is in force: what is traced must serve every platform, so no
    kernel of one platform (cuDNN's, or the CPU's of ``lstm_jax.lstm_cpu``) goes into it."""
    return _PORTABLE.get()


def cudnn_weights(params: Params) -> Array:
    """``params`` (Keras's layout) as cuDNN's flat LSTM weights,
    ``[4UD + 4UU + 4U + 4U]``: ``W_ih = kernel^T``, ``W_hh = recurrent_kernel^T``,
    ``b_ih = bias``, ``b_hh = 0``; gates ``i, f, g, o`` in both."""
    bias = params["bias"]
    return jnp.concatenate(
        [
            params["kernel"].T.ravel(),
            params["recurrent_kernel"].T.ravel(),
            bias.ravel(),
            jnp.zeros_like(bias).ravel(),
        ]
    )


def why_not(params: Params, inputs: Array, *, unroll) -> str | None:
    """Why cuDNN cannot run this LSTM here, or ``None`` when it can."""
    if is_portable():
        return "a program for any platform is being traced (lstm_cudnn.portable: jax.export)"
    if jax.default_backend() != "gpu":
        return f"there is no GPU here (JAX's default backend is {jax.default_backend()})"
    if not _jax_compat.has_cudnn_rnn():
        return "this jaxlib has no cuDNN RNN (jax.experimental.rnn needs JAX's CUDA plugin)"
    if unroll not in (1, False):
        return f"unroll={unroll!r} (cuDNN runs the whole sequence itself; use unroll=1)"
    dtypes = {jnp.result_type(inputs), jnp.result_type(params["kernel"])}
    if dtypes != {jnp.dtype(jnp.float32)}:
        names = ", ".join(sorted(str(d) for d in dtypes))
        return f"JAX's cuDNN LSTM takes float32 only; inputs and parameters are {names}"
    return None


def right_padded(mask: Array) -> Array:
    """Whether each row of ``mask [B, T]`` is its valid steps followed by padding (a scalar
    bool array)."""
    lengths = jnp.sum(mask, axis=1)
    return jnp.all(mask == (jnp.arange(mask.shape[1])[None] < lengths[:, None]))


def _cudnn_lstm(x, h0, c0, weights, lengths) -> tuple[Array, Array, Array]:
    """``jax.experimental.rnn.lstm``, one layer, one direction: ``(y [B, T, U], h [B, U],
    c [B, U])``; ``y`` is zero after each row's length."""
    from jax.experimental import rnn

    d, u = x.shape[-1], h0.shape[-1]
    y, h, c = rnn.lstm(
        x,
        h0[None],
        c0[None],
        weights,
        lengths,
        input_size=d,
        hidden_size=u,
        num_layers=1,
        dropout=0.0,
        bidirectional=False,
    )
    return y, h[0], c[0]


def run(
    params: Params,
    inputs: Array,
    carry: tuple[Array, Array],
    mask: Array | None,
    go_backwards: bool,
    *,
    kernel: Callable | None = None,
) -> tuple[Array, Array, Array]:
    """``(hs [B, T, U], h [B, U], c [B, U])`` of the LSTM over ``inputs [B, T, D]`` from
    ``carry = (h0, c0)``, as ``run_cell`` gives them (``hs`` in the order read), through
    ``kernel`` (cuDNN; the tests pass ``jax.experimental.rnn``'s reference). ``mask [B, T]``
    must be right-padded (``right_padded``)."""
    kernel = kernel or _cudnn_lstm
    b, t, _ = inputs.shape
    h0, c0 = carry
    weights = cudnn_weights(params)
    if mask is None:
        x = inputs[:, ::-1] if go_backwards else inputs
        return kernel(x, h0, c0, weights, jnp.full((b,), t, jnp.int32))
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)  # [B]
    steps = jnp.arange(t)[None]  # [1, T]
    valid = steps < lengths[:, None]  # [B, T]
    x = inputs
    if go_backwards:  # each row's valid steps, last first (its padding after them)
        x = jnp.take_along_axis(
            inputs, jnp.where(valid, lengths[:, None] - 1 - steps, steps)[..., None], axis=1
        )
    # A sequence of length 0 must not reach cuDNN (jax issue 17966): it reads one step,
    # and its row is given back its initial state below.
    y, h, c = kernel(x, h0, c0, weights, jnp.maximum(lengths, 1))
    empty = (lengths == 0)[:, None]
    h, c = jnp.where(empty, h0, h), jnp.where(empty, c0, c)
    if not go_backwards:  # after its length, a row repeats its last output
        return jnp.where(valid[..., None], y, h[:, None]), h, c
    # Read backwards, a row's T - L padding steps come first, each repeating the initial h.
    source = steps - (t - lengths)[:, None]  # [B, T]: the step of y each output is
    hs = jnp.take_along_axis(y, jnp.maximum(source, 0)[..., None], axis=1)
    return jnp.where((source >= 0)[..., None], hs, h0[:, None]), h, c
