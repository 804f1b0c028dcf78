"""Flax NNX layers over the same cells: ``LSTM``, ``GRU``, ``SimpleRNN``, ``Bidirectional``,
``Dense``, ``Embedding``, ``Masking``, ``Sequential``, the lesson's ``Classifier`` and the
``LanguageModel``.

Each is the linen layer of ``lstm_jax.linen`` as an NNX module: built eagerly from its input
size and ``rngs=nnx.Rngs(...)``, holding its parameters (``kernel``, ``recurrent_kernel``,
``bias``, Keras's layout and initialisers) as ``nnx.Param``, and computed by the same functions
as the linen layer (``forward.recurrent_call``, ``forward.bidirectional_call``,
``forward.dense_call``, ``forward.chain_call``), so no equation is written twice. Parameters are
named and nested as the linen model's (``Sequential``'s ``layers_0``, ``Classifier``'s
``LSTM_0``, ``Bidirectional``'s ``forward``), so weights move between the two by name:
``to_linen_variables(model)`` gives ``{"params": ...}`` as the linen model's ``init`` does, and
``load_linen_variables(model, variables)`` takes them.

>>> from flax import nnx
>>> import jax.numpy as jnp
>>> layer = LSTM(28, 50, rngs=nnx.Rngs(0))
>>> layer(jnp.ones((4, 28, 28))).shape
(4, 50)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstm_jax import forward, recurrent
from lstm_jax import linen as lnn

# The layers of ``lstm_jax.linen``, by the same names, and the moves between the two.
__all__ = [n for n in lnn.__all__ if n != "ACTIVATIONS"] + [
    "from_linen",
    "load_linen_variables",
    "to_linen",
    "to_linen_variables",
]

Array = jax.Array
_PARAMS = ("kernel", "recurrent_kernel", "bias")


class RecurrentBase(nnx.Module):
    """The base of the NNX recurrent layers: ``lstm_jax.linen.RecurrentBase``'s options, with
    ``in_features`` (the ``D`` of ``[batch, time, D]``) first, since NNX builds eagerly.

    Attributes:
      in_features, units: the inputs' features and the state's size.
      kernel, recurrent_kernel, bias: the parameters (``nnx.Param``, Keras's layout).
      deterministic: dropout off (``.eval()``) or on (``.train()``), as ``nnx.Dropout``'s.
      rngs: where dropout's masks are drawn from in training.
      return_sequences, return_state, go_backwards, unroll, zero_output_for_mask, dtype,
      param_dtype, dropout, recurrent_dropout: as ``lstm_jax.linen.RecurrentBase``'s.
    """

    cell: ClassVar[recurrent.Cell]

    def __init__(
        self,
        in_features: int,
        units: int,
        *,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        unroll: int = 1,
        zero_output_for_mask: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        rngs: nnx.Rngs,
        **cell_options,
    ):
        self.in_features, self.units = in_features, units
        self.return_sequences, self.return_state = return_sequences, return_state
        self.go_backwards, self.unroll = go_backwards, unroll
        self.zero_output_for_mask, self.dtype, self.param_dtype = (
            zero_output_for_mask,
            dtype,
            param_dtype,
        )
        self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
        forward.check_rates(self)
        # As nnx.Dropout: its rngs draw the masks (kept whatever the rates, which may be set
        # later); model.train() / .eval() set deterministic.
        self.rngs = rngs
        self.deterministic = False
        for name, value in cell_options.items():  # the LSTM's unit_forget_bias, use_cudnn
            setattr(self, name, value)
        params = forward.init_layer_params(self, rngs.params(), in_features)
        for name in _PARAMS:
            setattr(self, name, nnx.Param(params[name]))

    def options(self) -> dict:
        """The keyword arguments that build this layer again (``rngs`` aside), as those of
        its linen twin."""
        return {n: getattr(self, n) for n in self.option_names(self.cell.name)}

    @staticmethod
    def option_names(cell: str) -> tuple[str, ...]:
        names = ("return_sequences", "return_state", "go_backwards", "unroll")
        names += ("zero_output_for_mask", "dtype", "param_dtype", "dropout", "recurrent_dropout")
        return names + (("unit_forget_bias", "use_cudnn") if cell == "lstm" else ())

    def __call__(self, inputs, *, mask=None, initial_state=None, deterministic=None, rngs=None):
        """``inputs: [batch, time, features]``; ``mask: [batch, time]`` bool (optional).
        With a dropout rate, training (``deterministic`` False, the attribute's value when
        ``None``, as ``nnx.Dropout``) draws masks from ``rngs`` (or those given when built)."""
        forward.check_rank(self, inputs)
        params = {name: getattr(self, name)[...] for name in _PARAMS}
        deterministic = self.deterministic if deterministic is None else deterministic
        key = None
        if not deterministic and (self.dropout or self.recurrent_dropout):
            rngs = rngs if rngs is not None else self.rngs
            key = rngs.dropout()
        return forward.recurrent_call(
            self, params, inputs, mask=mask, initial_state=initial_state, key=key
        )


class LSTM(RecurrentBase):
    """``LSTM(in_features, units, *, return_sequences=..., return_state=..., go_backwards=...,
    unroll=..., zero_output_for_mask=False, unit_forget_bias=True, use_cudnn="auto",
    rngs)``: ``lstm_jax.linen.LSTM`` in NNX."""

    cell = recurrent.CELLS["lstm"]

    def __init__(self, in_features, units, *, unit_forget_bias=True, use_cudnn="auto", **kw):
        super().__init__(
            in_features, units, unit_forget_bias=unit_forget_bias, use_cudnn=use_cudnn, **kw
        )


class GRU(RecurrentBase):
    """``lstm_jax.linen.GRU`` (Keras's ``reset_after=True``) in NNX."""

    cell = recurrent.CELLS["gru"]


class SimpleRNN(RecurrentBase):
    """``lstm_jax.linen.SimpleRNN`` in NNX."""

    cell = recurrent.CELLS["simple_rnn"]


LAYERS = {layer.cell.name: layer for layer in (LSTM, GRU, SimpleRNN)}


class Bidirectional(nnx.Module):
    """``Bidirectional(layer, merge_mode="concat", *, rngs)``: ``layer`` reads forwards, a
    new layer of the same kind and options (its own weights, from ``rngs``) reads backwards;
    merged as ``lstm_jax.linen.Bidirectional`` merges them. The halves are ``forward`` and
    ``backward``."""

    def __init__(self, layer: RecurrentBase, merge_mode: str | None = "concat", *, rngs: nnx.Rngs):
        forward.check_merge_mode(merge_mode)
        self.merge_mode = merge_mode
        zero = layer.return_sequences  # as Keras's Bidirectional sets it
        layer.zero_output_for_mask = zero
        self.forward = layer
        options = {**layer.options(), "go_backwards": not layer.go_backwards}
        self.backward = type(layer)(layer.in_features, layer.units, **options, rngs=rngs)

    @property
    def layer(self) -> RecurrentBase:
        return self.forward

    def __call__(self, inputs: Array, *, mask: Array | None = None, deterministic=None):
        return forward.bidirectional_call(self, inputs, mask=mask, deterministic=deterministic)


class Dense(nnx.Module):
    """``Dense(in_features, units, activation=None, use_bias=True, dtype=None, *, rngs)``:
    ``lstm_jax.linen.Dense`` in NNX (Keras's glorot-uniform kernel, zero bias)."""

    def __init__(
        self,
        in_features: int,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        dtype: Any = None,
        *,
        rngs: nnx.Rngs,
    ):
        forward.check_activation(activation)
        self.in_features, self.units = in_features, units
        self.activation, self.use_bias, self.dtype = activation, use_bias, dtype
        kernel = jax.nn.initializers.glorot_uniform()(rngs.params(), (in_features, units))
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(jnp.zeros((units,))) if use_bias else None

    def __call__(self, x: Array) -> Array:
        bias = None if self.bias is None else self.bias[...]
        return forward.dense_call(self, x, self.kernel[...], bias)


class Embedding(nnx.Module):
    """``Embedding(input_dim, output_dim, dtype=None, *, rngs)``: ``lstm_jax.linen.Embedding``
    in NNX (Keras's uniform initialiser in [-0.05, 0.05])."""

    def __init__(self, input_dim: int, output_dim: int, dtype: Any = None, *, rngs: nnx.Rngs):
        self.input_dim, self.output_dim, self.dtype = input_dim, output_dim, dtype
        self.embeddings = nnx.Param(forward.init_embeddings(rngs.params(), input_dim, output_dim))

    def __call__(self, ids: Array) -> Array:
        return forward.embedding_call(self, ids, self.embeddings[...])


class Masking(nnx.Module):
    """``lstm_jax.linen.Masking`` in NNX (no parameters)."""

    def __init__(self, mask_value: float = 0.0):
        self.mask_value = mask_value

    def compute_mask(self, x: Array) -> Array:
        return forward.valid_steps(x, self.mask_value)

    def __call__(self, x: Array) -> Array:
        return forward.masked(x, self.mask_value)


class Sequential(nnx.Module):
    """``Sequential(layers)``: ``lstm_jax.linen.Sequential`` in NNX; the layers are
    ``layers_0``, ``layers_1``, ... as in linen."""

    def __init__(self, layers: Sequence[nnx.Module]):
        self.size = len(layers)
        for n, layer in enumerate(layers):
            setattr(self, f"layers_{n}", layer)

    @property
    def layers(self) -> tuple[nnx.Module, ...]:
        return tuple(getattr(self, f"layers_{n}") for n in range(self.size))

    def __call__(self, x: Array, *, mask: Array | None = None, deterministic=None) -> Array:
        return forward.chain_call(self.layers, x, mask=mask, deterministic=deterministic)


class Classifier(nnx.Module):
    """The lesson's model in NNX: ``Classifier(in_features=28, cell="lstm", units=(50,),
    num_classes=10, bidirectional=False, dtype=None, unroll=1, use_cudnn="auto", *, rngs)``,
    ``lstm_jax.linen.Classifier``'s layers with the same names (``LSTM_0``, ..., ``Dense_0``);
    returns logits."""

    def __init__(
        self,
        in_features: int = 28,
        *,
        cell: str = "lstm",
        units: int | Sequence[int] = (50,),
        num_classes: int = 10,
        bidirectional: bool = False,
        dtype: Any = None,
        unroll: int = 1,
        use_cudnn: str | bool = "auto",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        rngs: nnx.Rngs,
    ):
        units = (units,) if isinstance(units, int | np.integer) else tuple(units)
        self.in_features, self.cell, self.units = in_features, cell, units
        self.num_classes, self.bidirectional, self.dtype = num_classes, bidirectional, dtype
        self.unroll, self.use_cudnn = unroll, use_cudnn
        self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
        self.return_sequences = return_sequences
        names = []
        features = in_features
        for name, size, options in lnn.classifier_chain(self):
            layer = LAYERS[cell](features, size, **options, rngs=rngs)
            if name.startswith("Bidirectional"):
                layer = Bidirectional(layer, rngs=rngs)
            setattr(self, name, layer)
            names.append(name)
            features = size * (2 if bidirectional else 1)
        self.Dense_0 = Dense(features, num_classes, dtype=dtype, rngs=rngs)
        self.names = (*names, "Dense_0")

    def layers(self) -> tuple[nnx.Module, ...]:
        return tuple(getattr(self, name) for name in self.names)

    def __call__(self, x: Array, *, mask: Array | None = None, deterministic=None) -> Array:
        """``x: [batch, time, features]`` -> logits ``[batch, num_classes]`` (``[batch, time,
        num_classes]`` with ``return_sequences``)."""
        return forward.classifier_call(self, x, mask=mask, deterministic=deterministic)


class LanguageModel(nnx.Module):
    """``lstm_jax.linen.LanguageModel`` in NNX: ``LanguageModel(vocab_size, *, embed=64,
    cell="lstm", units=(256,), dtype=None, unroll=1, use_cudnn="auto", dropout=0.0,
    recurrent_dropout=0.0, rngs)``, the same layers under the same names (``Embedding_0``,
    ``LSTM_0``, ..., ``Dense_0``), the same ``initial_state=`` and ``return_state=``."""

    def __init__(
        self,
        vocab_size: int,
        *,
        embed: int = 64,
        cell: str = "lstm",
        units: int | Sequence[int] = (256,),
        dtype: Any = None,
        unroll: int = 1,
        use_cudnn: str | bool = "auto",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        units = (units,) if isinstance(units, int | np.integer) else tuple(units)
        self.vocab_size, self.embed, self.cell, self.units = vocab_size, embed, cell, units
        self.dtype, self.unroll, self.use_cudnn = dtype, unroll, use_cudnn
        self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
        self.Embedding_0 = Embedding(vocab_size, embed, dtype, rngs=rngs)
        options = dict(return_sequences=True, return_state=True, dtype=dtype, unroll=unroll)
        options.update(dropout=dropout, recurrent_dropout=recurrent_dropout)
        if cell == "lstm":
            options["use_cudnn"] = use_cudnn
        names, features = ["Embedding_0"], embed
        for n, size in enumerate(units):
            name = f"{LAYERS[cell].__name__}_{n}"
            setattr(self, name, LAYERS[cell](features, size, **options, rngs=rngs))
            names.append(name)
            features = size
        self.Dense_0 = Dense(features, vocab_size, dtype=dtype, rngs=rngs)
        self.names = (*names, "Dense_0")

    def layers(self) -> tuple[nnx.Module, ...]:
        return tuple(getattr(self, name) for name in self.names)

    def __call__(
        self, ids: Array, *, initial_state=None, return_state=False, mask=None, deterministic=None
    ):
        """``ids: [batch, time]`` ints -> logits ``[batch, time, vocab_size]``, and with
        ``return_state`` the state after the last step."""
        logits, state = forward.language_model_call(
            self, ids, initial_state=initial_state, mask=mask, deterministic=deterministic
        )
        return (logits, state) if return_state else logits


def to_linen_variables(model: nnx.Module) -> dict:
    """``{"params": ...}`` of ``model``, nested and named as the same linen model's
    ``init`` gives them."""
    return {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}


def load_linen_variables(model: nnx.Module, variables: dict) -> nnx.Module:
    """Sets ``model``'s parameters from the linen model's ``variables`` (``{"params": ...}``,
    the same names and shapes); returns ``model``.

    Raises:
      ValueError: the names or shapes differ; says which.
    """
    params = variables.get("params", variables)
    state = nnx.state(model, nnx.Param)
    mine, theirs = nnx.to_pure_dict(state), jax.tree.map(jnp.asarray, dict(params))
    if jax.tree.structure(mine) != jax.tree.structure(theirs):
        raise ValueError(
            f"the variables do not name this model's parameters: the model has "
            f"{_paths(mine)}; the variables have {_paths(theirs)}"
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(mine), jax.tree.leaves(theirs), strict=True
    ):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"{jax.tree_util.keystr(path)}: the model's parameter is {jnp.shape(a)}, the "
                f"variables' {jnp.shape(b)}"
            )
    nnx.replace_by_pure_dict(state, theirs)
    nnx.update(model, state)
    return model


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


# The options both APIs' Classifier take, under the same names.
_CLASSIFIER_OPTIONS = (
    "cell",
    "units",
    "num_classes",
    "bidirectional",
    "dtype",
    "unroll",
    "use_cudnn",
    "dropout",
    "recurrent_dropout",
    "return_sequences",
)
_LANGUAGE_MODEL_OPTIONS = (
    "vocab_size",
    "embed",
    "cell",
    "units",
    "dtype",
    "unroll",
    "use_cudnn",
    "dropout",
    "recurrent_dropout",
)


def to_linen(model: nnx.Module) -> lnn.nn.Module:
    """The ``lstm_jax.linen`` (linen) model of the same layers and options as ``model``: with
    ``to_linen_variables(model)`` it computes what ``model`` computes. ``to_keras``,
    ``summary`` and the trainer take NNX models through it.

    Raises:
      ValueError: ``model`` holds a module that is not one of this module's layers.
    """
    if isinstance(model, RecurrentBase):
        return lnn.LAYERS[model.cell.name](model.units, **model.options())
    if isinstance(model, Bidirectional):
        return lnn.Bidirectional(to_linen(model.forward), model.merge_mode)
    if isinstance(model, Dense):
        return lnn.Dense(model.units, model.activation, model.use_bias, model.dtype)
    if isinstance(model, Masking):
        return lnn.Masking(model.mask_value)
    if isinstance(model, Embedding):
        return lnn.Embedding(model.input_dim, model.output_dim, model.dtype)
    if isinstance(model, LanguageModel):
        return lnn.LanguageModel(**{n: getattr(model, n) for n in _LANGUAGE_MODEL_OPTIONS})
    if isinstance(model, Sequential):
        return lnn.Sequential([to_linen(layer) for layer in model.layers])
    if isinstance(model, Classifier):
        return lnn.Classifier(**{name: getattr(model, name) for name in _CLASSIFIER_OPTIONS})
    raise ValueError(
        f"{type(model).__name__} is not an lstm_jax.nnx layer: only those (LSTM, GRU, "
        "SimpleRNN, Bidirectional, Dense, Embedding, Masking, Sequential, Classifier, "
        "LanguageModel) have a linen twin"
    )


def from_linen(module: lnn.nn.Module, variables: dict, in_features: int) -> nnx.Module:
    """The NNX model of the same layers and options as the linen ``module``, holding
    ``variables`` (``{"params": ...}``); ``in_features`` is the ``D`` of its inputs
    ``[batch, time, D]``. It comes in evaluation mode (``.eval()``: no dropout), as the linen
    module's ``apply`` infers by default; ``.train()`` turns dropout on.

    Raises:
      ValueError: ``module`` holds a layer this module has no NNX form of.
    """
    model, _ = _nnx_of(module, in_features, nnx.Rngs(0))
    model.eval()
    return load_linen_variables(model, variables)


def _nnx_of(module, features: int, rngs: nnx.Rngs) -> tuple[nnx.Module, int]:
    """The NNX form of ``module`` reading ``features``, and the features it outputs."""
    if isinstance(module, lnn.RecurrentBase):
        options = {f: getattr(module, f) for f in RecurrentBase.option_names(module.cell.name)}
        return LAYERS[module.cell.name](features, module.units, **options, rngs=rngs), module.units
    if isinstance(module, lnn.Bidirectional):
        inner, units = _nnx_of(module.layer, features, rngs)
        merged = 2 * units if module.merge_mode == "concat" else units
        return Bidirectional(inner, module.merge_mode, rngs=rngs), merged
    if isinstance(module, lnn.Dense):
        dense = Dense(
            features, module.units, module.activation, module.use_bias, module.dtype, rngs=rngs
        )
        return dense, module.units
    if isinstance(module, lnn.Masking):
        return Masking(module.mask_value), features
    if isinstance(module, lnn.Embedding):
        return Embedding(module.input_dim, module.output_dim, module.dtype, rngs=rngs), (
            module.output_dim
        )
    if isinstance(module, lnn.LanguageModel):
        kwargs = {n: getattr(module, n) for n in _LANGUAGE_MODEL_OPTIONS}
        return LanguageModel(**kwargs, rngs=rngs), module.vocab_size
    if isinstance(module, lnn.Sequential):
        layers = []
        for layer in module.layers:
            layer, features = _nnx_of(layer, features, rngs)
            layers.append(layer)
        return Sequential(layers), features
    if isinstance(module, lnn.Classifier):
        kwargs = {name: getattr(module, name) for name in _CLASSIFIER_OPTIONS}
        return Classifier(features, **kwargs, rngs=rngs), module.num_classes
    raise ValueError(f"{type(module).__name__} has no lstm_jax.nnx form")
