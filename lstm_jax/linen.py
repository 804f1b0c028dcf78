"""Flax linen layers over the functional core, with Keras's names and behaviour.

``LSTM(50)(x)`` does what ``keras.layers.LSTM(50)(x)`` does: ``x`` is ``[batch, time,
features]``, the output ``[batch, 50]`` (or ``[batch, time, 50]`` with
``return_sequences=True``). Each layer owns the parameters ``kernel``, ``recurrent_kernel``
and ``bias`` in Keras's layout (see ``lstm_jax.recurrent``), so weights move between the two
by name. Unlike Keras's ``Dense(10, activation="softmax")``, ``Classifier`` returns logits:
pair it with ``optax.softmax_cross_entropy``, which is the same loss, computed stably.

``Sequential``, ``Dense`` and ``Masking`` complete Keras's vocabulary for stacking layers:
``Sequential`` carries a mask from ``Masking`` (or its ``mask=`` argument) to each recurrent
layer, as Keras does, and ``lstm_jax.from_keras`` builds one from a Keras model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import recurrent
from lstm_jax.forward import (
    ACTIVATIONS,
    bidirectional_call,
    chain_call,
    check_activation,
    check_merge_mode,
    check_rank,
    check_rates,
    classifier_call,
    dense_call,
    embedding_call,
    init_embeddings,
    init_layer_params,
    language_model_call,
    masked,
    recurrent_call,
    valid_steps,
)

__all__ = [
    "ACTIVATIONS",
    "LAYERS",
    "GRU",
    "LSTM",
    "Bidirectional",
    "Classifier",
    "Dense",
    "Embedding",
    "LanguageModel",
    "Masking",
    "RecurrentBase",
    "Sequential",
    "SimpleRNN",
]

Array = jax.Array


class RecurrentBase(nn.Module):
    """The base of the recurrent layers (``LSTM``, ``GRU``, ``SimpleRNN``), as Flax's
    ``RNNCellBase`` is of its cells: the parameters ``kernel``, ``recurrent_kernel`` and
    ``bias`` in Keras's layout, then the cell run over time by ``recurrent.run_cell``.

    A subclass names its cell (``cell = recurrent.CELLS[...]``, whose ``init`` makes the
    parameters) and adds the cell's own options.

    Attributes:
      units: the size of the state ``h`` (and ``c``), and of each output step.
      return_sequences: the outputs of every step ``[batch, time, units]``, not the last.
      return_state: also the final state: ``(output, h)`` or the LSTM's ``(output, h, c)``.
      go_backwards: read the sequence from its end (outputs in the order read, as Keras).
      unroll: time steps per iteration of the scan (``lax.scan``'s ``unroll``).
      dtype: the compute dtype (e.g. ``jnp.bfloat16``); None: that of inputs and params.
      param_dtype: the parameters' dtype.
      zero_output_for_mask: with a mask and ``return_sequences``, zeros at masked steps
        instead of the previous output (``Bidirectional`` sets it, as Keras's does).
      dropout: Keras's rate of the inputs' units dropped in training
        (``deterministic=False``, from the ``"dropout"`` rng).
      recurrent_dropout: Keras's rate of ``h``'s units dropped in training.
    """

    units: int
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    unroll: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    zero_output_for_mask: bool = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0

    cell: ClassVar[recurrent.Cell]  # the registry's entry (``recurrent.CELLS``)

    def __post_init__(self):
        check_rates(self)
        super().__post_init__()

    def _init_params(self, key: Array, input_dim: int) -> dict[str, Array]:
        return init_layer_params(self, key, input_dim)

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        mask: Array | None = None,
        initial_state=None,
        deterministic: bool | None = None,
    ) -> Array | tuple[Array, ...]:
        """``inputs: [batch, time, features]``; ``mask: [batch, time]`` bool (optional).
        ``deterministic=False`` (training) applies dropout, from the ``"dropout"`` rng;
        ``None`` or ``True`` (inference, Keras's default) does not."""
        check_rank(self, inputs)
        input_dim = jnp.shape(inputs)[-1]
        # Flax hands each parameter its own key; drawing all three from one
        # ``init_*`` call keeps one source of truth for Keras's initialisers.
        params = {
            name: self.param(
                name,
                lambda key, name=name: self._init_params(key, input_dim)[name],
            )
            for name in ("kernel", "recurrent_kernel", "bias")
        }
        key = None
        if deterministic is False and (self.dropout or self.recurrent_dropout):
            key = self.make_rng("dropout")
        return recurrent_call(self, params, inputs, mask=mask, initial_state=initial_state, key=key)


class LSTM(RecurrentBase):
    """Keras-style LSTM layer: ``LSTM(units, return_sequences=..., return_state=...,
    go_backwards=..., unroll=..., zero_output_for_mask=False, unit_forget_bias=True,
    use_cudnn="auto")``; see ``recurrent.lstm``.

    Attributes:
      unit_forget_bias: the forget gate's bias starts at 1 (Keras's default).
      use_cudnn: ``"auto"`` runs cuDNN's LSTM on a GPU where it computes the same, ``True``
        requires it, ``False`` never (``recurrent.lstm``).
      (and those of ``RecurrentBase``)

    >>> import jax, jax.numpy as jnp
    >>> layer = LSTM(50)
    >>> x = jnp.ones((4, 28, 28))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> layer.apply(variables, x).shape
    (4, 50)
    """

    unit_forget_bias: bool = True
    use_cudnn: str | bool = "auto"
    cell = recurrent.CELLS["lstm"]


class GRU(RecurrentBase):
    """Keras-style GRU layer (``reset_after=True``); see ``recurrent.gru``. Its attributes
    are ``RecurrentBase``'s."""

    cell = recurrent.CELLS["gru"]


class SimpleRNN(RecurrentBase):
    """Keras-style SimpleRNN layer (tanh); see ``recurrent.simple_rnn``. Its attributes are
    ``RecurrentBase``'s."""

    cell = recurrent.CELLS["simple_rnn"]


class Bidirectional(nn.Module):
    """Runs a recurrent layer forwards and a copy of it backwards, as Keras's wrapper does.

    The copy reads the sequence from the end; with ``return_sequences`` its outputs are
    flipped back into time order before merging, so step ``t`` of both halves refers to the
    same input step; as in Keras, both halves then output zeros at masked steps
    (``zero_output_for_mask``). ``merge_mode`` is one of ``concat`` (default), ``sum``, ``mul``,
    ``ave``, or ``None`` for the pair ``(forward, backward)``. With ``return_state`` on the
    wrapped layer the result is ``(output, *forward_states, *backward_states)``. The halves'
    parameters live under ``forward`` and ``backward``.

    Attributes:
      layer: the recurrent layer read forwards; a copy of it reads backwards.
      merge_mode: how the two halves' outputs are merged (``_MERGES``), or None.

    >>> import jax, jax.numpy as jnp
    >>> layer = Bidirectional(LSTM(8, return_sequences=True))
    >>> x = jnp.ones((2, 5, 3))
    >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
    (2, 5, 16)
    """

    layer: RecurrentBase
    merge_mode: str | None = "concat"

    def setup(self):
        check_merge_mode(self.merge_mode)
        zero = self.layer.return_sequences  # as Keras's Bidirectional sets it
        self.forward = self.layer.clone(parent=self, name="forward", zero_output_for_mask=zero)
        self.backward = self.layer.clone(
            parent=self,
            name="backward",
            go_backwards=not self.layer.go_backwards,
            zero_output_for_mask=zero,
        )

    def __call__(
        self, inputs: Array, *, mask: Array | None = None, deterministic: bool | None = None
    ):
        return bidirectional_call(self, inputs, mask=mask, deterministic=deterministic)


# The layer of each registered cell (``recurrent.CELLS``), by its name.
LAYERS = {layer.cell.name: layer for layer in (LSTM, GRU, SimpleRNN)}
assert LAYERS.keys() == recurrent.CELLS.keys(), "each registered cell needs its layer"


def units_tuple(units) -> tuple:
    """``units=50`` as in Keras's ``LSTM(50)``, or several; a tuple either way (hashable,
    for jit)."""
    return (units,) if isinstance(units, int | np.integer) else tuple(units)


def classifier_chain(model) -> list[tuple[str, int, dict]]:
    """The recurrent layers of a ``Classifier`` (this module's or ``lstm_jax.nnx``'s), as
    ``(name, units, options)``: ``LSTM_0`` (or ``Bidirectional_0`` wrapping it), ``LSTM_1``,
    ...; each but the last returns sequences. ``Dense_0`` follows them."""
    if model.cell not in LAYERS:
        raise ValueError(f"cell must be one of {sorted(LAYERS)}; got {model.cell!r}")
    if not model.units:
        raise ValueError("units must hold at least one layer's size, e.g. (50,); got ()")
    classes = model.num_classes
    if isinstance(classes, bool) or not isinstance(classes, int | np.integer) or classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {classes!r}")
    chain = []
    every_step = getattr(model, "return_sequences", False)
    for n, units in enumerate(model.units):
        options = {
            "return_sequences": every_step or n < len(model.units) - 1,
            "dtype": model.dtype,
            "unroll": model.unroll,
            "dropout": model.dropout,
            "recurrent_dropout": model.recurrent_dropout,
        }
        if model.cell == "lstm":
            options["use_cudnn"] = model.use_cudnn
        kind = "Bidirectional" if model.bidirectional else LAYERS[model.cell].__name__
        chain.append((f"{kind}_{n}", units, options))
    return chain


class Classifier(nn.Module):
    """Recurrent layers then a Dense head returning logits: the lesson's model.

    ``Classifier(cell="lstm", units=(50,), num_classes=10)`` is ``LSTM(50)`` then
    ``Dense(10)``; with several ``units`` the layers stack, each but the last returning
    sequences. ``bidirectional`` wraps each layer in ``Bidirectional``. ``dtype`` is the
    compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32. ``use_cudnn``,
    ``dropout`` and ``recurrent_dropout`` are each recurrent layer's (``recurrent.lstm``).
    ``mask`` (bool ``[batch, time]``) marks each sequence's valid steps, as ``Sequential``'s.
    With ``return_sequences``, the last layer returns every step too and the head gives
    logits at every step, ``[batch, time, num_classes]`` (Keras's ``Dense`` after
    ``LSTM(return_sequences=True)``): a label per step, or values (``num_classes=1``).

    Attributes:
      cell: ``"lstm"``, ``"gru"`` or ``"simple_rnn"`` (``recurrent.CELLS``).
      units: each recurrent layer's units; an int is one layer.
      num_classes: the logits' size.
      return_sequences: logits at every step, not only after the last.
      bidirectional: each recurrent layer wrapped in ``Bidirectional``.
      dtype: the compute dtype; the logits are float32 whatever it is.
      unroll, use_cudnn, dropout, recurrent_dropout: each recurrent layer's.
    """

    cell: str = "lstm"
    units: int | Sequence[int] = (50,)
    num_classes: int = 10
    bidirectional: bool = False
    dtype: Any = None
    unroll: int = 1
    use_cudnn: str | bool = "auto"
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    return_sequences: bool = False

    def __post_init__(self):
        object.__setattr__(self, "units", units_tuple(self.units))
        super().__post_init__()

    @nn.nowrap
    def layers(self) -> tuple[nn.Module, ...]:
        """The model as a chain of this module's layers, each named as its parameters are
        (``LSTM_0`` or ``Bidirectional_0``, ..., ``Dense_0``): what ``__call__`` runs, and
        what ``to_keras`` and ``params.describe`` read."""
        chain = []
        for name, units, options in classifier_chain(self):
            if name.startswith("Bidirectional"):
                chain.append(Bidirectional(LAYERS[self.cell](units, **options), name=name))
            else:
                chain.append(LAYERS[self.cell](units, **options, name=name))
        return (*chain, Dense(self.num_classes, dtype=self.dtype, name="Dense_0"))

    @nn.compact
    def __call__(
        self, x: Array, *, mask: Array | None = None, deterministic: bool | None = None
    ) -> Array:
        """``x: [batch, time, features]`` -> logits ``[batch, num_classes]`` (``[batch, time,
        num_classes]`` with ``return_sequences``); dropout in training
        (``deterministic=False``) only."""
        deterministic = True if deterministic is None else deterministic
        return classifier_call(self, x, mask=mask, deterministic=deterministic)


class Dense(nn.Module):
    """Keras's ``Dense(units, activation=None, use_bias=True)``: ``y = activation(x W + b)``
    on the last axis, ``kernel [features, units]`` initialised glorot-uniform as Keras does,
    ``bias [units]`` zeros.

    Attributes:
      units: the outputs' size.
      activation: a name from ``ACTIVATIONS``, or None (linear).
      use_bias: add ``bias``.
      dtype: the compute dtype; None: that of the inputs.
    """

    units: int
    activation: str | None = None
    use_bias: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_activation(self.activation)
        kernel = self.param(
            "kernel", nn.initializers.glorot_uniform(), (jnp.shape(x)[-1], self.units)
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.units,))
        return dense_call(self, x, kernel, bias)


class Masking(nn.Module):
    """Keras's ``Masking(mask_value=0.0)``: a step whose features all equal ``mask_value``
    is masked for the recurrent layers that follow in a ``Sequential``; its features are
    zeroed, as Keras does. Alone, ``Masking()(x)`` returns ``x`` with the masked steps zeroed;
    ``compute_mask(x)`` gives the mask, bool ``[batch, time]``.

    Attributes:
      mask_value: the value whose steps are masked.
    """

    mask_value: float = 0.0

    def compute_mask(self, x: Array) -> Array:
        return valid_steps(x, self.mask_value)

    def __call__(self, x: Array) -> Array:
        return masked(x, self.mask_value)


class Sequential(nn.Module):
    """Layers applied in turn, as Keras's ``Sequential``: ``[batch, time, features]`` in.

    The mask (bool ``[batch, time]``, from the ``mask=`` argument or a ``Masking`` layer)
    goes to every recurrent layer and ``Bidirectional``; a layer returning sequences passes
    it on, one returning its last output ends it, as in Keras. Any other Flax module is
    called on the output alone.

    Attributes:
      layers: the layers, applied in order (``layers_0``, ``layers_1``, ... in the params).

    >>> import jax, jax.numpy as jnp
    >>> model = Sequential([Masking(), LSTM(8, return_sequences=True), GRU(4), Dense(3)])
    >>> x = jnp.ones((2, 5, 3))
    >>> model.apply(model.init(jax.random.key(0), x), x).shape
    (2, 3)
    """

    layers: Sequence[nn.Module]

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))  # hashable, for jax.jit
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: Array, *, mask: Array | None = None, deterministic: bool | None = None
    ) -> Array:
        """``deterministic=False`` trains (dropout on); ``None`` or ``True`` infers."""
        deterministic = True if deterministic is None else deterministic
        return chain_call(self.layers, x, mask=mask, deterministic=deterministic)


class Embedding(nn.Module):
    """Keras's ``Embedding(input_dim, output_dim)``: token ids ``[...]`` -> vectors ``[...,
    output_dim]``, rows of ``embeddings [input_dim, output_dim]``, initialised uniformly in
    ``[-0.05, 0.05]`` as Keras does. An id outside ``[0, input_dim)`` reads the nearest row
    (``jnp.take``'s clip), where Keras would fail.

    Attributes:
      input_dim: how many ids (the vocabulary's size).
      output_dim: each vector's size.
      dtype: the compute dtype; None: the parameters'.
    """

    input_dim: int
    output_dim: int
    dtype: Any = None

    @nn.compact
    def __call__(self, ids: Array) -> Array:
        embeddings = self.param(
            "embeddings",
            lambda key: init_embeddings(key, self.input_dim, self.output_dim),
        )
        return embedding_call(self, ids, embeddings)


class LanguageModel(nn.Module):
    """``Embedding`` -> recurrent layers -> ``Dense(vocab_size)`` at every step: a language
    model (char-rnn's; Keras's ``Embedding``, ``LSTM(return_sequences=True)``, ``Dense``).

    ``model.apply(variables, ids)`` maps token ids ``[batch, time]`` to the next token's
    logits at every step, ``[batch, time, vocab_size]``. Its state can be carried from one
    call to the next (reading a long text in windows, or generating one token at a time):
    ``initial_state`` is a tuple with each layer's state (``(h, c)`` for an LSTM, ``(h,)``
    otherwise, each ``[batch, units]``; None: zeros), and ``return_state=True`` returns
    ``(logits, state)`` with the state after the last step, in the same form.

    Attributes:
      vocab_size: how many token ids, in and out.
      embed: the embedding's size.
      cell, units, dtype, unroll, use_cudnn, dropout, recurrent_dropout: as ``Classifier``'s.
    """

    vocab_size: int
    embed: int = 64
    cell: str = "lstm"
    units: int | Sequence[int] = (256,)
    dtype: Any = None
    unroll: int = 1
    use_cudnn: str | bool = "auto"
    dropout: float = 0.0
    recurrent_dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "units", units_tuple(self.units))
        super().__post_init__()

    @nn.nowrap
    def layers(self) -> tuple[nn.Module, ...]:
        """``Embedding_0``, the recurrent layers (``LSTM_0``, ...), ``Dense_0``."""
        if self.cell not in LAYERS:
            raise ValueError(f"cell must be one of {sorted(LAYERS)}; got {self.cell!r}")
        options = {"return_sequences": True, "return_state": True, "dtype": self.dtype}
        options.update(
            unroll=self.unroll, dropout=self.dropout, recurrent_dropout=self.recurrent_dropout
        )
        if self.cell == "lstm":
            options["use_cudnn"] = self.use_cudnn
        layer = LAYERS[self.cell]
        return (
            Embedding(self.vocab_size, self.embed, dtype=self.dtype, name="Embedding_0"),
            *(layer(u, **options, name=f"{layer.__name__}_{n}") for n, u in enumerate(self.units)),
            Dense(self.vocab_size, dtype=self.dtype, name="Dense_0"),
        )

    @nn.compact
    def __call__(
        self,
        ids: Array,
        *,
        initial_state=None,
        return_state: bool = False,
        mask: Array | None = None,
        deterministic: bool | None = None,
    ):
        """``ids: [batch, time]`` ints -> logits ``[batch, time, vocab_size]`` (float32),
        and with ``return_state`` the state after the last step."""
        deterministic = True if deterministic is None else deterministic
        logits, state = language_model_call(
            self, ids, initial_state=initial_state, mask=mask, deterministic=deterministic
        )
        return (logits, state) if return_state else logits
