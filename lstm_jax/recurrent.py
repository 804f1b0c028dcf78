"""The sequence functions: ``lstm``, ``gru`` and ``simple_rnn`` scan the cells of
``lstm_jax.cells`` over ``[batch, time, features]`` with ``jax.lax.scan``, as Keras's
recurrent layers do, and ``CELLS`` registers each cell for the layers, the trainer and
``train.py``.

Shapes follow one convention throughout: ``[batch, time, features]`` for sequences, with
``B`` batch, ``T`` time, ``D`` input features and ``U`` units in the comments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypedDict, Unpack

import jax
import jax.numpy as jnp

from lstm_jax import _jax_compat, lstm_cudnn
from lstm_jax.cells import (
    Array,
    Params,
    gru_cell,
    init_gru,
    init_lstm,
    init_simple_rnn,
    lstm_cell,
    simple_rnn_cell,
)
from lstm_jax.dropout import apply_dropout, check_rates, dropout_masks
from lstm_jax.gru_scan import gru_unmasked_scan
from lstm_jax.lstm_scan import lstm_unmasked_scan

__all__ = [
    "CELLS",
    "Cell",
    "SequenceOptions",
    "check_rates",
    "dropout_masks",
    "gru",
    "gru_cell",
    "init_gru",
    "init_lstm",
    "init_simple_rnn",
    "lstm",
    "lstm_cell",
    "run_cell",
    "simple_rnn",
    "simple_rnn_cell",
]

# --------------------------------------------------------------------------------------
# The registry of cells
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cell:
    """A recurrent cell, as the sequence functions, the Flax layers, the trainer and
    ``train.py`` know it: adding a cell means adding its step and initialiser and one entry
    in ``CELLS``.

    Attributes:
      name: how ``train.py --cell`` and ``nn.Classifier(cell=...)`` name it, e.g. ``"lstm"``.
      layer: Keras's (and ``lstm_jax.linen``'s) layer name, e.g. ``"LSTM"``.
      step: ``step(params, carry, x_t) -> (carry, y_t)``, the signature ``jax.lax.scan`` wants.
      init: ``init(key, input_dim, units, *, dtype)``, Keras's initialisers.
      gates: gate blocks in each kernel (``kernel [D, gates * U]``).
      state: the names of the carry's arrays, ``("h", "c")`` or ``("h",)``; ``h`` first.
      biases: bias rows (2 for Keras's GRU with ``reset_after``: ``bias [2, 3U]``).
      unmasked_scan: ``(params, xs, carry, unroll) -> (hs, carry)``, a faster scan with the
        same results for inputs without a mask, or ``None``.
      unmasked_scan_below: the batch (on one device) from which ``unmasked_scan`` is not
        faster, and ``step`` under ``jax.lax.scan`` runs instead; ``None`` (every built-in
        cell's, which choose inside their ``unmasked_scan``): at every batch.
    """

    name: str
    layer: str
    step: Callable
    init: Callable
    gates: int
    state: tuple[str, ...]
    biases: int = 1
    unmasked_scan: Callable | None = None
    unmasked_scan_below: int | None = None

    def bias_shape(self, units: int) -> tuple[int, ...]:
        size = self.gates * units
        return (size,) if self.biases == 1 else (self.biases, size)


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
            unmasked_scan=lstm_unmasked_scan,
        ),
        Cell(
            name="gru",
            layer="GRU",
            step=gru_cell,
            init=init_gru,
            gates=3,
            state=("h",),
            biases=2,
            unmasked_scan=gru_unmasked_scan,
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
      dropout, recurrent_dropout: Keras's rates, from 0 (the default) to below 1, of the
        inputs' and of ``h``'s units dropped before their projections, with masks drawn
        once per sequence from ``key`` (``dropout_masks``); kept units are scaled by
        ``1 / (1 - rate)``.
      key: a ``jax.random`` key for dropout's masks; ``None`` (inference, Keras's
        ``training=False``) drops nothing.
    """

    return_sequences: bool
    return_state: bool
    initial_state: Any
    go_backwards: bool
    mask: Array | None
    unroll: int | bool
    dropout: float
    recurrent_dropout: float
    key: Array | None


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
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    key: Array | None = None,
):
    """Runs ``cell.step`` over ``inputs`` ``[batch, time, features]`` (floating point) with
    ``jax.lax.scan``, as Keras's recurrent layers do; ``lstm``, ``gru`` and ``simple_rnn``
    are this for their cell. ``params`` are as ``cell.init`` returns them; the options are
    ``SequenceOptions``.

    The carry is handled here as a tuple whose first element is ``h``, the step's output.
    Without a mask, ``cell.unmasked_scan`` (where the cell has one, at its batch sizes)
    replaces the scan.

    Returns:
      the output, or ``(output, *state)`` when ``return_state``.

    Raises:
      ValueError: inputs not rank 3 or not floating point, features that do not match the
        kernel, a mask or initial state of the wrong shape.
    """
    units = _check_params(cell, params)
    _check_inputs(cell.name, params, inputs, mask)
    inputs, masks = apply_dropout(cell, params, inputs, dropout, recurrent_dropout, key)
    batch = jnp.shape(inputs)[0]
    dtype = jnp.result_type(inputs, params["kernel"])
    carry = _initial_carry(cell, initial_state, batch, units, dtype)
    xs = jnp.swapaxes(inputs, 0, 1)  # [T, B, D]: scan runs over the leading axis
    if go_backwards:
        xs = xs[::-1]
    carry = _jax_compat.varying_like(carry, xs)  # inside shard_map: the carry varies as xs
    hs, carry = _scan(cell, params, xs, carry, mask, masks, go_backwards, unroll)

    outputs = jnp.swapaxes(hs, 0, 1) if return_sequences else carry[0]
    if return_state:
        return (outputs, *carry)
    return outputs


def _scan(cell: Cell, params: Params, xs, carry: tuple, mask, masks, go_backwards, unroll):
    """``(hs [T, B, U], final carry)``: ``cell`` over ``xs`` (time first, already in the
    order read), a masked step keeping the previous state and repeating its output."""
    if len(cell.state) > 1:  # the step's own carry: (h, c) for the LSTM, h for the others
        wrap, unwrap = (lambda carry: carry), (lambda carry: carry)
    else:
        wrap, unwrap = (lambda carry: carry[0]), (lambda h: (h,))
    if mask is None and masks is None and _unmasked_scan_applies(cell, xs.shape[1]):
        return cell.unmasked_scan(params, xs, carry, unroll)
    if mask is None:

        def body(carry, x_t):
            carry, h = _step(cell, params, wrap(carry), x_t, masks)
            return unwrap(carry), h

        carry, hs = jax.lax.scan(body, carry, xs, unroll=unroll)
        return hs, carry
    m = jnp.swapaxes(jnp.asarray(mask, bool), 0, 1)[:, :, None]  # [T, B, 1]
    if go_backwards:
        m = m[::-1]

    def masked_body(carry, step):
        x_t, m_t = step
        new = unwrap(_step(cell, params, wrap(carry), x_t, masks)[0])
        # A masked step keeps the previous state; its output repeats h_{t-1}.
        carry = tuple(jnp.where(m_t, n, o) for n, o in zip(new, carry, strict=True))
        return carry, carry[0]

    carry, hs = jax.lax.scan(masked_body, carry, (xs, m), unroll=unroll)
    return hs, carry


def _unmasked_scan_applies(cell: Cell, batch: int) -> bool:
    if cell.unmasked_scan is None:
        return False
    if cell.unmasked_scan_below is None:
        return True
    # A symbolic batch (jax.export) takes the step's scan, which serves every batch.
    return isinstance(batch, int) and batch < cell.unmasked_scan_below


def _step(cell: Cell, params: Params, carry, x_t: Array, masks):
    """``cell.step``, with dropout's ``masks`` when there are any."""
    if masks is None:
        return cell.step(params, carry, x_t)
    return cell.step(params, carry, x_t, masks)


def lstm(
    params: Params,
    inputs: Array,
    *,
    use_cudnn: str | bool = "auto",
    **options: Unpack[SequenceOptions],
):
    """Runs ``lstm_cell`` over ``[batch, time, features]`` with ``jax.lax.scan``, as Keras's
    ``LSTM`` layer does; ``options`` are ``SequenceOptions``, ``params`` from ``init_lstm``.

    Without a mask the scan runs the same equations in a transposed, feature-major layout
    with a hand-written gradient (``jax.custom_vjp``), both chosen for speed; its outputs and
    gradients equal ``lstm_cell``'s and autodiff's.

    ``use_cudnn`` (Keras 3's option): ``"auto"`` runs cuDNN's LSTM (``lstm_jax.lstm_cudnn``)
    where it can serve: on an NVIDIA GPU, float32, ``unroll=1``, and no mask or a
    right-padded one (checked as the program runs; any other mask scans). ``True`` requires
    it: where cuDNN cannot serve it is a ``ValueError`` saying why, and a mask is taken as
    right-padded (one known when traced is checked). ``False`` always scans.

    >>> import jax, jax.numpy as jnp
    >>> p = init_lstm(jax.random.key(0), input_dim=28, units=50)
    >>> x = jnp.ones((4, 28, 28))
    >>> lstm(p, x).shape, lstm(p, x, return_sequences=True).shape
    ((4, 50), (4, 28, 50))
    >>> out, h, c = lstm(p, x, return_state=True)
    >>> bool((out == h).all())
    True
    """
    cell = CELLS["lstm"]
    if use_cudnn not in lstm_cudnn.USE_CUDNN:
        raise ValueError(f"lstm: use_cudnn must be 'auto', True or False; got {use_cudnn!r}")
    _check_params(cell, params)
    _check_inputs(cell.name, params, inputs, options.get("mask"))
    defaults = (("dropout", 0.0), ("recurrent_dropout", 0.0), ("key", None))
    dropout = {name: options.pop(name, default) for name, default in defaults}
    if dropout["key"] is not None and dropout["recurrent_dropout"]:
        # Recurrent dropout: the cell applies masks at every step, in the scan.
        if use_cudnn is True:
            raise ValueError(
                "lstm: use_cudnn=True, but cuDNN cannot run this LSTM: it has recurrent "
                "dropout (in training); use_cudnn='auto' scans it"
            )
        return run_cell(cell, params, inputs, **dropout, **options)
    inputs, _ = apply_dropout(cell, params, inputs, *dropout.values())  # masks the inputs, once
    unroll = options.get("unroll", 1)
    why = None if use_cudnn is False else lstm_cudnn.why_not(params, inputs, unroll=unroll)
    if use_cudnn is True and why is not None:
        raise ValueError(f"lstm: use_cudnn=True, but cuDNN cannot run this LSTM: {why}")
    if use_cudnn is False or why is not None:
        return run_cell(cell, params, inputs, **options)
    return _lstm_on_cudnn(params, inputs, required=use_cudnn is True, **options)


def _lstm_on_cudnn(
    params: Params, inputs: Array, *, required: bool, **options: Unpack[SequenceOptions]
):
    """``lstm`` through ``lstm_cudnn.run``; with a mask, ``required`` or not (``"auto"``:
    the scan for a mask that is not right-padded)."""
    cell = CELLS["lstm"]
    mask, go_backwards = options.get("mask"), options.get("go_backwards", False)
    units = _check_params(cell, params)
    _check_inputs(cell.name, params, inputs, mask)
    initial_state = options.get("initial_state")
    carry = _initial_carry(cell, initial_state, jnp.shape(inputs)[0], units, inputs.dtype)
    carry = _jax_compat.varying_like(carry, inputs)  # the state varies as inputs do

    def cudnn():
        return lstm_cudnn.run(params, inputs, carry, mask, go_backwards)

    def scan():
        return run_cell(
            cell,
            params,
            inputs,
            return_sequences=True,
            return_state=True,
            initial_state=carry,
            go_backwards=go_backwards,
            mask=mask,
        )

    if mask is None:
        hs, h, c = cudnn()
    elif not required:
        hs, h, c = jax.lax.cond(lstm_cudnn.right_padded(mask), cudnn, scan)
    else:
        try:
            padded = bool(lstm_cudnn.right_padded(mask))
        except jax.errors.ConcretizationTypeError:  # traced: taken as right-padded
            padded = True
        if not padded:
            raise ValueError(
                "lstm: use_cudnn=True, but cuDNN cannot run this LSTM: its mask is not "
                "right-padded (each row's valid steps first); use_cudnn='auto' scans it"
            )
        hs, h, c = cudnn()
    outputs = hs if options.get("return_sequences", False) else h
    return (outputs, h, c) if options.get("return_state", False) else outputs


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
