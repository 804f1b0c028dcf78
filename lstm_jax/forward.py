"""The layers' forward passes and checks, written once for ``lstm_jax.linen`` and
``lstm_jax.nnx``: each function takes a layer of either (they have the same options) and its
parameters, so no equation is written twice."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm_jax import recurrent

Array = jax.Array


def parameters_of(module: nn.Module) -> set[str]:
    """The names ``module.__call__`` takes."""
    try:
        return set(inspect.signature(type(module).__call__).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: no names to read
        return set()


def check_rank(layer, inputs: Array) -> None:
    if jnp.ndim(inputs) != 3:
        raise ValueError(
            f"{type(layer).__name__}: inputs must be rank 3, [batch, time, features]; "
            f"got shape {jnp.shape(inputs)}"
        )


def check_rates(layer) -> None:
    """``recurrent.check_rates`` for a layer's rates: when it is built, and at every call (an
    NNX layer's rate may be set later)."""
    recurrent.check_rates(
        type(layer).__name__, dropout=layer.dropout, recurrent_dropout=layer.recurrent_dropout
    )


def init_layer_params(layer, key: Array, input_dim: int) -> dict[str, Array]:
    """The parameters of a recurrent ``layer`` (this module's, or ``lstm_jax.nnx``'s: its
    ``cell``, ``units``, ``param_dtype`` and, for the LSTM, ``unit_forget_bias``)."""
    if layer.cell.name == "lstm":
        return recurrent.init_lstm(
            key,
            input_dim,
            layer.units,
            unit_forget_bias=layer.unit_forget_bias,
            dtype=layer.param_dtype,
        )
    return layer.cell.init(key, input_dim, layer.units, dtype=layer.param_dtype)


def recurrent_call(layer, params, inputs: Array, *, mask=None, initial_state=None, key=None):
    """The forward pass of a recurrent ``layer`` (this module's, or ``lstm_jax.nnx``'s, which
    have the same options) with its ``params``: Keras's layer over ``recurrent.run_cell``;
    ``key`` draws dropout's masks (training), ``None`` drops nothing."""
    check_rates(layer)
    if layer.dtype is not None:
        inputs = inputs.astype(layer.dtype)
        params = {k: v.astype(layer.dtype) for k, v in params.items()}
    options = dict(
        return_sequences=layer.return_sequences,
        return_state=layer.return_state,
        initial_state=initial_state,
        go_backwards=layer.go_backwards,
        mask=mask,
        unroll=layer.unroll,
    )
    if key is not None:
        options.update(dropout=layer.dropout, recurrent_dropout=layer.recurrent_dropout, key=key)
    if layer.cell.name == "lstm":
        out = recurrent.lstm(params, inputs, use_cudnn=layer.use_cudnn, **options)
    else:
        out = recurrent.run_cell(layer.cell, params, inputs, **options)
    if not (layer.zero_output_for_mask and layer.return_sequences and mask is not None):
        return out
    steps = jnp.flip(mask, axis=1) if layer.go_backwards else mask  # the outputs' order
    if layer.return_state:
        return (jnp.where(steps[..., None], out[0], 0), *out[1:])
    return jnp.where(steps[..., None], out, 0)


_MERGES = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "ave": lambda a, b: (a + b) / 2,
}


def check_merge_mode(merge_mode) -> None:
    if merge_mode is not None and merge_mode not in _MERGES:
        raise ValueError(f"merge_mode must be one of {sorted(_MERGES)} or None; got {merge_mode!r}")


def bidirectional_call(wrapper, inputs: Array, *, mask: Array | None = None, deterministic=None):
    """The forward pass of a ``Bidirectional`` ``wrapper`` (this module's or
    ``lstm_jax.nnx``'s): its ``forward`` and ``backward`` halves, merged as Keras merges them;
    each half draws its own dropout masks."""
    fwd = wrapper.forward(inputs, mask=mask, deterministic=deterministic)
    bwd = wrapper.backward(inputs, mask=mask, deterministic=deterministic)
    states_f, states_b = (), ()
    if wrapper.layer.return_state:
        fwd, *states_f = fwd
        bwd, *states_b = bwd
    if wrapper.layer.return_sequences:
        bwd = jnp.flip(bwd, axis=1)
    merge_mode = wrapper.merge_mode
    out = (fwd, bwd) if merge_mode is None else _MERGES[merge_mode](fwd, bwd)
    if wrapper.layer.return_state:
        return (out, *states_f, *states_b)
    return out


def classifier_call(model, x: Array, *, mask=None, deterministic=None) -> Array:
    """A ``Classifier``'s (this module's or ``lstm_jax.nnx``'s) layers over ``x``; float32
    logits whatever the compute dtype."""
    if model.dtype is not None:
        x = x.astype(model.dtype)
    x = chain_call(model.layers(), x, mask=mask, deterministic=deterministic)
    return x.astype(jnp.float32)


def init_embeddings(key: Array, input_dim: int, output_dim: int, dtype=jnp.float32) -> Array:
    """An ``Embedding``'s table ``[input_dim, output_dim]``, as Keras initialises it:
    uniform in ``[-0.05, 0.05]``."""
    return jax.random.uniform(key, (input_dim, output_dim), dtype, -0.05, 0.05)


def embedding_call(layer, ids: Array, embeddings: Array) -> Array:
    """The rows of ``embeddings`` that ``ids`` name (an ``Embedding`` ``layer``'s, this
    module's or ``lstm_jax.nnx``'s)."""
    if not jnp.issubdtype(jnp.asarray(ids).dtype, jnp.integer):
        raise ValueError(
            f"{type(layer).__name__}: ids must be integers (token ids); got "
            f"{jnp.asarray(ids).dtype}"
        )
    out = jnp.take(embeddings, ids, axis=0)
    return out if layer.dtype is None else out.astype(layer.dtype)


def language_model_call(model, ids: Array, *, initial_state=None, mask=None, deterministic=None):
    """A ``LanguageModel``'s layers over token ``ids [batch, time]``: ``(float32 logits
    [batch, time, vocab], state)``, ``state`` a tuple of each recurrent layer's ``(h, c)`` or
    ``(h,)`` after the last step, starting from ``initial_state`` (None: zeros)."""
    embedding, *rnns, head = model.layers()
    if initial_state is not None and len(initial_state) != len(rnns):
        raise ValueError(
            f"{type(model).__name__}: initial_state must hold one state per recurrent layer "
            f"({len(rnns)}); got {len(initial_state)}"
        )
    x = embedding(ids)
    states = []
    for n, layer in enumerate(rnns):
        switch = {} if deterministic is None else {"deterministic": deterministic}
        start = None if initial_state is None else tuple(initial_state[n])
        x, *state = layer(x, mask=mask, initial_state=start, **switch)
        states.append(tuple(state))
    return head(x).astype(jnp.float32), tuple(states)


# Keras's activations by name, for ``Dense``.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # Keras's default
}


def check_activation(activation) -> None:
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(
            f"Dense: activation must be one of {sorted(ACTIVATIONS)} or None; got {activation!r}"
        )


def dense_call(layer, x: Array, kernel: Array, bias: Array | None) -> Array:
    """``activation(x W + b)`` for a ``Dense`` ``layer`` (this module's or ``lstm_jax.nnx``'s)."""
    if layer.dtype is not None:
        x, kernel = x.astype(layer.dtype), kernel.astype(layer.dtype)
    y = x @ kernel
    if bias is not None:
        y = y + jnp.broadcast_to(bias.astype(y.dtype), y.shape)
    return ACTIVATIONS[layer.activation or "linear"](y)


def valid_steps(x: Array, mask_value: float) -> Array:
    """Keras's ``Masking``: a step is valid unless all its features equal ``mask_value``;
    bool ``[batch, time]``."""
    return jnp.any(x != mask_value, axis=-1)


def masked(x: Array, mask_value: float) -> Array:
    """``x`` with the steps ``valid_steps`` masks zeroed, as Keras's ``Masking`` outputs."""
    return x * valid_steps(x, mask_value)[..., None].astype(x.dtype)


def _recurrent_in(layer):
    """The recurrent layer that ``layer`` is or wraps (``Bidirectional``), or ``None``."""
    inner = getattr(layer, "layer", layer)
    return inner if isinstance(getattr(inner, "cell", None), recurrent.Cell) else None


def chain_call(layers, x: Array, *, mask: Array | None = None, deterministic=None) -> Array:
    """``layers`` applied in turn as Keras's ``Sequential`` applies them, the mask carried
    to each recurrent layer (this module's layers, or ``lstm_jax.nnx``'s), and
    ``deterministic``, unless None, to each layer whose call takes it (the recurrent
    layers, ``nn.Dropout``, a module of your own)."""
    for layer in layers:
        switch = {}
        if deterministic is not None and "deterministic" in parameters_of(layer):
            switch = {"deterministic": deterministic}
        if hasattr(layer, "compute_mask"):  # Masking
            mask = layer.compute_mask(x)
            x = layer(x)
        elif _recurrent_in(layer) is not None:
            x = layer(x, mask=mask, **switch)
            if not _recurrent_in(layer).return_sequences:
                mask = None
        else:
            x = layer(x, **switch)
    return x
