"""Keras 3 models in and out: ``from_keras(keras_model)`` and ``to_keras(module, variables)``.

A Keras model made of ``Input``, ``Masking``, ``Embedding``, ``LSTM``, ``GRU``,
``SimpleRNN``, ``Bidirectional`` and ``Dense`` (Sequential, or functional with its layers in a
chain)
becomes an ``lstm_jax.linen.Sequential`` and its variables, with the same weights in the same
layout, so that ``module.apply(variables, x)`` returns what ``keras_model(x)`` returns, and
back. A layer computing in bfloat16 (``dtype=jnp.bfloat16``, float32 parameters) is Keras's
``mixed_bfloat16`` policy; ``dropout`` and ``recurrent_dropout`` come and go with their
rates. What this project does not implement (stateful layers,
other activations, regularizers, other dtype policies, ...) is refused, naming the layer and
the option; nothing is dropped quietly.

Keras is imported by these functions, not by ``import lstm_jax``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lstm_jax import linen as lnn
from lstm_jax.forward import ACTIVATIONS
from lstm_jax.params import is_nnx_module

__all__ = [
    "SUPPORTED",
    "UnsupportedError",
    "from_keras",
    "to_keras",
]

SUPPORTED = (
    "InputLayer",
    "Masking",
    "Embedding",
    "LSTM",
    "GRU",
    "SimpleRNN",
    "Bidirectional",
    "Dense",
)

# What each recurrent layer's config must say, beyond the options lstm_jax.linen implements.
_RECURRENT_DEFAULTS = {
    "activation": "tanh",
    "recurrent_activation": "sigmoid",  # not SimpleRNN's
    "use_bias": True,
    "stateful": False,
    "return_state": False,
    "reset_after": True,  # GRU's
}
_NOT_SET = (
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
    "quantization_config",
)


class UnsupportedError(ValueError):
    """A Keras layer, or one of its options, that lstm_jax does not implement."""


def _refuse(layer_name: str, class_name: str, what: str):
    raise UnsupportedError(
        f"Keras layer {layer_name!r} ({class_name}): {what} is not implemented by lstm_jax; "
        "nothing was converted"
    )


# Keras dtype policies and the lstm_jax compute dtype of each (parameters stay float32).
_POLICIES = {None: None, "float32": None, "mixed_bfloat16": jnp.bfloat16}


def _check_options(name: str, cls: str, config: dict, expected: dict) -> Any:
    """Refuses options other than ``expected`` and those lstm_jax does not implement;
    returns the layer's compute dtype (``_POLICIES``)."""
    for option, value in expected.items():
        if option in config and config[option] != value:
            _refuse(name, cls, f"{option}={config[option]!r} (lstm_jax: {value!r})")
    for option in _NOT_SET:
        if config.get(option) is not None:
            _refuse(name, cls, f"{option} (set)")
    dtype = config.get("dtype")
    policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if policy not in _POLICIES:
        _refuse(
            name, cls, f"dtype policy {policy!r} (lstm_jax converts float32 and mixed_bfloat16)"
        )
    return _POLICIES[policy]


def _policy(dtype: Any) -> dict:
    """The Keras ``dtype=`` of a layer computing in ``dtype`` (``None``: float32)."""
    if dtype is None:
        return {}
    if jnp.dtype(dtype) == jnp.bfloat16:
        return {"dtype": "mixed_bfloat16"}
    raise UnsupportedError(f"to_keras: dtype={jnp.dtype(dtype)} (Keras: float32 or bfloat16)")


def _chain(keras_model) -> list:
    """The model's layers in order, with ``InputLayer`` left out; a functional model must
    have one input and one output, each layer fed by the one before."""
    import keras

    if not isinstance(keras_model, keras.Model):
        raise UnsupportedError(
            f"from_keras takes a keras.Model (Sequential or functional); got "
            f"{type(keras_model).__name__}"
        )
    if not keras_model.layers:
        raise ValueError(f"Keras model {keras_model.name!r} has no layers to convert")
    if not keras_model.built:
        raise ValueError(
            f"Keras model {keras_model.name!r} is not built, so it has no weights yet: start "
            "it with keras.Input((time, features)), or call it on a batch once"
        )
    if isinstance(keras_model, keras.Sequential):
        return list(keras_model.layers)
    config = keras_model.get_config()
    if "layers" not in config or len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
        raise UnsupportedError(
            f"Keras model {keras_model.name!r}: from_keras converts Sequential models and "
            "functional ones with one input, one output and the layers in a chain"
        )
    by_name = {layer.name: layer for layer in keras_model.layers}
    masks = _mask_operations(keras_model, config["layers"], by_name)
    layers, previous = [], None
    for layer_config in config["layers"]:
        name = layer_config["name"]
        if name in masks:
            continue
        nodes = layer_config.get("inbound_nodes", [])
        sources = [h[0] for h in _keras_histories([n.get("args", n) for n in nodes])]
        mask = [h[0] for n in nodes for h in _keras_histories(n.get("kwargs", {}).get("mask"))]
        if layer_config["class_name"] == "InputLayer":
            if previous is not None:
                raise UnsupportedError(f"Keras model {keras_model.name!r} has two inputs")
        elif len(nodes) != 1 or sources != [previous]:
            raise UnsupportedError(
                f"Keras layer {name!r} takes {sources or 'no'} as input, not only the layer "
                f"before it ({previous!r}): from_keras converts layers in a chain"
            )
        elif mask and not any(type(layer).__name__ == "Masking" for layer in layers):
            raise UnsupportedError(
                f"Keras layer {name!r} takes a mask that no Masking layer before it makes: "
                "from_keras converts masks from Masking layers"
            )
        else:
            layers.append(by_name[name])
        previous = name
    return layers


# The operations a functional model records to compute a ``Masking`` layer's mask
# (``any(x != mask_value, axis=-1)``), which ``Sequential`` computes from the layer itself.
_MASK_OPERATIONS = ("NotEqual", "Any")


def _mask_operations(keras_model, layer_configs: list[dict], by_name: dict) -> set[str]:
    """The names of the operations (entries that are not layers) in a functional model's
    config: each must compute a ``Masking`` layer's mask, with its ``mask_value``.

    Raises:
      UnsupportedError: another operation, or a mask value no ``Masking`` layer has.
    """
    values = {float(v.mask_value) for v in by_name.values() if type(v).__name__ == "Masking"}
    names = set()
    for layer_config in layer_configs:
        name, cls = layer_config["name"], layer_config["class_name"]
        if name in by_name or cls == "InputLayer":
            continue
        if cls not in _MASK_OPERATIONS or not values:
            raise UnsupportedError(
                f"Keras model {keras_model.name!r}: the operation {name!r} ({cls}) between "
                "its layers is not converted: from_keras converts layers in a chain"
            )
        if cls == "NotEqual":
            constants = [
                a
                for node in layer_config.get("inbound_nodes", [])
                for a in node.get("args", [])
                if isinstance(a, int | float)
            ]
            if not constants or any(float(c) not in values for c in constants):
                raise UnsupportedError(
                    f"Keras model {keras_model.name!r}: the mask of {name!r} ({cls}, "
                    f"{constants}) is not a Masking layer's (mask_value {sorted(values)})"
                )
        names.add(name)
    return names


def _keras_histories(value) -> list:
    """The ``keras_history`` of every Keras tensor in a config's ``inbound_nodes``."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"]]
        return [h for v in value.values() for h in _keras_histories(v)]
    if isinstance(value, list | tuple):
        return [h for v in value for h in _keras_histories(v)]
    return []


def _recurrent(layer) -> tuple[nn.Module, dict]:
    cls = type(layer).__name__
    config = layer.get_config()
    for rate in ("dropout", "recurrent_dropout"):
        if not 0 <= config.get(rate, 0.0) < 1:
            _refuse(layer.name, cls, f"{rate}={config[rate]!r} (lstm_jax: from 0 to below 1)")
    expected = dict(_RECURRENT_DEFAULTS)
    if cls == "SimpleRNN":
        del expected["recurrent_activation"]
    dtype = _check_options(layer.name, cls, config, expected)
    cudnn = {"use_cudnn": getattr(layer, "use_cudnn", "auto")} if cls == "LSTM" else {}
    module = lnn.LAYERS[{"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}[cls]](
        config["units"],
        return_sequences=config["return_sequences"],
        go_backwards=config["go_backwards"],
        zero_output_for_mask=config["zero_output_for_mask"],
        dtype=dtype,
        dropout=float(config.get("dropout", 0.0)),
        recurrent_dropout=float(config.get("recurrent_dropout", 0.0)),
        **cudnn,
    )
    cell = layer.cell
    params = {
        "kernel": np.asarray(cell.kernel),
        "recurrent_kernel": np.asarray(cell.recurrent_kernel),
        "bias": np.asarray(cell.bias),
    }
    return module, params


def _layer(layer) -> tuple[nn.Module, dict | None]:
    cls = type(layer).__name__
    if cls not in SUPPORTED:
        raise UnsupportedError(
            f"Keras layer {layer.name!r} ({cls}) is not supported: from_keras converts "
            f"{', '.join(SUPPORTED)}"
        )
    if cls == "Masking":
        _check_options(layer.name, cls, layer.get_config(), {})
        return lnn.Masking(float(layer.mask_value)), None
    if cls in ("LSTM", "GRU", "SimpleRNN"):
        return _recurrent(layer)
    if cls == "Embedding":
        config = layer.get_config()
        expected = {"mask_zero": False, "embeddings_regularizer": None}
        expected.update(embeddings_constraint=None, lora_rank=None)
        dtype = _check_options(layer.name, cls, config, expected)
        module = lnn.Embedding(config["input_dim"], config["output_dim"], dtype=dtype)
        return module, {"embeddings": np.asarray(layer.embeddings)}
    if cls == "Bidirectional":
        fwd, bwd = layer.forward_layer, layer.backward_layer
        if type(fwd).__name__ not in ("LSTM", "GRU", "SimpleRNN"):
            _refuse(layer.name, cls, f"wrapping a {type(fwd).__name__}")
        forward, forward_params = _recurrent(fwd)
        backward, backward_params = _recurrent(bwd)

        def signature(m, backwards):
            return type(m), m.units, m.return_sequences, m.go_backwards != backwards

        forward = forward.clone(zero_output_for_mask=False)  # Bidirectional sets it
        if signature(backward, True) != signature(forward, False):
            _refuse(layer.name, cls, "a backward_layer other than the forward one reversed")
        dtype = _check_options(layer.name, cls, layer.get_config(), {})
        if dtype != forward.dtype or dtype != backward.dtype:
            _refuse(layer.name, cls, "a dtype policy other than its layers'")
        module = lnn.Bidirectional(forward, merge_mode=layer.merge_mode)
        return module, {"forward": forward_params, "backward": backward_params}
    if cls == "Dense":
        config = layer.get_config()
        dtype = _check_options(layer.name, cls, config, {})
        activation = config["activation"]
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            _refuse(layer.name, cls, f"activation={activation!r}")
        module = lnn.Dense(
            config["units"],
            activation=None if activation == "linear" else activation,
            use_bias=config["use_bias"],
            dtype=dtype,
        )
        params = {"kernel": np.asarray(layer.kernel)}
        if config["use_bias"]:
            params["bias"] = np.asarray(layer.bias)
        return module, params
    raise AssertionError(cls)  # InputLayer never reaches here (``_chain`` leaves it out)


def from_keras(keras_model, *, api: str = "linen"):
    """``(module, variables)`` computing what ``keras_model`` computes; with ``api="nnx"``,
    the ``lstm_jax.nnx.Sequential`` holding them instead, in evaluation mode as
    ``keras_model(x)`` is (``.train()`` turns dropout on).

    ``module`` is an ``lstm_jax.linen.Sequential`` of the model's layers; ``variables`` is
    ``{"params": ...}`` holding copies of its weights. ``module.apply(variables, x)`` equals
    ``keras_model(x)`` (``mask=`` works as in Keras), and ``lstm_jax.training`` can train it
    (with a final ``Dense`` that returns logits).

    Raises:
      UnsupportedError: a layer, or a layer's option, that lstm_jax does not implement;
        the message names the layer and the option.
    """
    layers, params = [], {}
    for layer in _chain(keras_model):
        module, layer_params = _layer(layer)
        if layer_params is not None:
            params[f"layers_{len(layers)}"] = layer_params
        layers.append(module)
    module, variables = lnn.Sequential(tuple(layers)), {"params": params}
    if api == "linen":
        return module, variables
    if api != "nnx":
        raise ValueError(f"from_keras: api must be 'linen' or 'nnx'; got {api!r}")
    from lstm_jax import nnx as lnnx

    return lnnx.from_linen(module, variables, keras_model.inputs[0].shape[-1])


# --------------------------------------------------------------------------------------
# lstm_jax -> Keras
# --------------------------------------------------------------------------------------


def _as_layers(module: nn.Module, params: dict) -> list[tuple[nn.Module, Any]]:
    """``module`` as a chain of lstm_jax layers and their parameters."""
    if isinstance(module, lnn.Sequential):
        return [(layer, params.get(f"layers_{i}")) for i, layer in enumerate(module.layers)]
    if isinstance(module, lnn.Classifier):
        return [(layer, params[layer.name]) for layer in module.layers()]
    if isinstance(module, lnn.LanguageModel):  # its layers, without the state it can return
        return [
            (layer.clone(return_state=False) if hasattr(layer, "return_state") else layer,
             params[layer.name])
            for layer in module.layers()
        ]  # fmt: skip
    return [(module, params)]


def _keras_layer(keras, module: nn.Module, params):
    """A Keras layer equal to ``module``, and its weights in ``set_weights`` order."""
    if isinstance(module, lnn.Masking):
        return keras.layers.Masking(module.mask_value), []
    if isinstance(module, lnn.Embedding):
        layer = keras.layers.Embedding(module.input_dim, module.output_dim, **_policy(module.dtype))
        return layer, [params["embeddings"]]
    if isinstance(module, lnn.RecurrentBase):
        if module.return_state:
            raise UnsupportedError(f"to_keras: {type(module).__name__}(return_state=True)")
        cls = getattr(keras.layers, type(module).__name__)
        cudnn = {"use_cudnn": module.use_cudnn} if isinstance(module, lnn.LSTM) else {}
        layer = cls(
            module.units,
            return_sequences=module.return_sequences,
            go_backwards=module.go_backwards,
            zero_output_for_mask=module.zero_output_for_mask,
            dropout=module.dropout,
            recurrent_dropout=module.recurrent_dropout,
            **_policy(module.dtype),
            **cudnn,
        )
        weights = [params["kernel"], params["recurrent_kernel"], params["bias"]]
        return layer, weights
    if isinstance(module, lnn.Bidirectional):
        inner, forward = _keras_layer(keras, module.layer, params["forward"])
        _, backward = _keras_layer(keras, module.layer, params["backward"])
        wrapper = keras.layers.Bidirectional(
            inner, merge_mode=module.merge_mode, **_policy(module.layer.dtype)
        )
        return wrapper, forward + backward
    if isinstance(module, lnn.Dense):
        layer = keras.layers.Dense(
            module.units,
            activation=module.activation or "linear",
            use_bias=module.use_bias,
            **_policy(module.dtype),
        )
        return layer, [params["kernel"], *([params["bias"]] if module.use_bias else [])]
    raise UnsupportedError(
        f"to_keras converts lstm_jax.linen's Sequential, Classifier, LanguageModel, Masking, "
        f"Embedding, LSTM, GRU, SimpleRNN, Bidirectional and Dense; got {type(module).__name__}"
    )


def to_keras(module, variables: dict | None = None):
    """A ``keras.Sequential`` computing what ``module.apply(variables, x)`` computes, for
    inputs ``[batch, time, features]`` (any number of steps), or token ids ``[batch, time]``
    for a model that starts with an ``Embedding`` (a ``LanguageModel``: its logits at every
    step, from a zero state); or what an ``lstm_jax.nnx`` model computes (``variables`` then
    left out: the model holds them)."""
    import keras

    if is_nnx_module(module):
        from lstm_jax import nnx as lnnx

        module, variables = lnnx.to_linen(module), lnnx.to_linen_variables(module)
    params = variables.get("params", variables)
    chain = _as_layers(module, params)
    layers, weights = [], []
    for m, p in chain:
        layer, w = _keras_layer(keras, m, p)
        layers.append(layer)
        weights.append(w)
    if isinstance(chain[0][0], lnn.Embedding):  # token ids in
        inputs = keras.Input((None,), dtype="int32")
    else:
        features = next(
            (np.shape(p["kernel"])[0] if "kernel" in p else np.shape(p["forward"]["kernel"])[0])
            for m, p in chain
            if p is not None
        )
        inputs = keras.Input((None, features))
    model = keras.Sequential([inputs, *layers])
    for layer, w in zip(layers, weights, strict=True):
        layer.set_weights([np.asarray(a) for a in w])
    return model
