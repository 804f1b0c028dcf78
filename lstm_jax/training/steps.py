"""The model and its steps: the model a config describes, the optimizer, the training
state, one optimizer step, and the jitted epoch functions built from it.

* A whole epoch is one jitted call (``train_epoch``): a ``lax.scan`` over batches, with the
  training state donated, compiled once per run.
* Data parallel over every device of the mesh (``lstm_jax.training.sharding``), parameters and
  optimizer state replicated: each device computes the gradient of its slice of the batch
  (``jax.shard_map``), and the gradients are summed across devices. The same code serves one
  device, several, and several processes on one or many hosts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lstm_jax import _jax_compat
from lstm_jax import data as data_lib
from lstm_jax import linen as lnn
from lstm_jax.errors import ConfigError
from lstm_jax.training import calls as calls_lib
from lstm_jax.training import optim, sharding, tasks
from lstm_jax.training.config import MODEL_SETTINGS, Config


def make_model(
    config: Config, num_classes: int, *, task: str = "classify", per_step: bool = False
) -> nn.Module:
    """The model that ``config``'s model settings (``MODEL_SETTINGS``) describe for
    ``task``: a ``Classifier`` (logits at every step for ``per_step`` and for values per
    step, ``per_step``; ``num_classes`` 1 for values), or for ``next_token`` a
    ``LanguageModel`` over ``num_classes`` tokens."""
    dtype = jnp.bfloat16 if config.precision == "bfloat16" else None
    if task == "next_token":
        if config.bidirectional:
            raise ConfigError(
                "bidirectional",
                "bidirectional: a language model predicts each token from those before it; "
                "reading the text backwards too would show it the answer",
            )
        layers = {k: getattr(config, k) for k in ("cell", "units", "dropout", "recurrent_dropout")}
        return lnn.LanguageModel(vocab_size=num_classes, embed=config.embed, dtype=dtype, **layers)
    layers = {k: getattr(config, k) for k in MODEL_SETTINGS if k not in ("precision", "embed")}
    every_step = task == "per_step" or per_step
    return lnn.Classifier(
        **layers, num_classes=num_classes, dtype=dtype, return_sequences=every_step
    )


class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` and what some runs also carry: ``model_state``, the model's
    collections besides ``params`` (``calls.Calls.collections``, e.g. ``batch_stats``), and
    ``best``, with early stopping: ``{"params": ..., "model_state": ...}`` of the epoch of
    lowest validation loss so far. Runs with neither use Flax's own ``TrainState`` (and
    checkpoints of its shape)."""

    model_state: Any = flax.struct.field(default_factory=dict)
    best: Any = None


def model_calls(
    model: nn.Module, input_shape: tuple[int, int], variables: dict | None = None
) -> calls_lib.Calls:
    """How ``model`` is called (``calls.Calls``) on ``[batch, *input_shape]``: its switch,
    its mask, and the collections its ``variables`` hold (by default, those ``init`` makes).
    The one place the trainer, its model checks and ``Run`` work it out."""
    if variables is None:
        variables = init_variables(model, input_shape, abstract=True)
    return calls_lib.calls_of(model, variables)


def init_variables(model, input_shape, *, seed: int = 0, abstract: bool = False) -> dict:
    """``model``'s variables from ``seed``, as Keras would initialise them (``abstract``: only
    their shapes)."""
    key = jax.random.fold_in(jax.random.key(seed), 0)
    kwargs = calls_lib.calls_of(model).kwargs(train=False)
    example = data_lib.example_input(input_shape)
    x = jnp.zeros(example.shape, example.dtype)
    rngs = {"params": key, "dropout": jax.random.fold_in(key, 1)}

    def init(rngs, x):
        return model.init(rngs, x, **kwargs)

    # Jitted: one XLA compilation, not one per operation run eagerly (whose executables
    # stay cached, in memory). The values are the same.
    variables = jax.eval_shape(init, rngs, x) if abstract else jax.jit(init)(rngs, x)
    return dict(variables)


def create_train_state(
    config: Config,
    model: nn.Module,
    input_shape: tuple[int, int],
    *,
    variables: dict | None = None,
    steps_per_epoch: int = 1,
) -> train_state.TrainState:
    """Initialises the variables from ``config.seed`` (as Keras would), or takes the given
    ``variables`` (``{"params": ..., **collections}``), and the optimizer."""
    initial = init_variables(model, input_shape, seed=config.seed)
    if variables is not None:
        initial = _given_variables(initial, variables)
    calls = model_calls(model, input_shape, initial)
    tx = optim.make_optimizer(config, steps_per_epoch)
    params = initial["params"]
    if not calls.collections and config.early_stopping is None:
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    model_state = {k: initial[k] for k in calls.collections}
    best = None
    if config.early_stopping is not None:
        best = jax.tree.map(jnp.copy, {"params": params, "model_state": model_state})
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, model_state=model_state, best=best
    )


def _given_variables(initial: dict, given: Any) -> dict:
    """``given`` (``{"params": ..., **collections}`` or a bare parameter tree) in place of
    the model's ``initial`` variables, whose structure and shapes it must have; dtypes are
    cast to the model's. A collection ``given`` lacks keeps its initial value."""
    given = dict(given) if isinstance(given, Mapping) and "params" in given else {"params": given}
    kept = {k: v for k, v in initial.items() if k != "intermediates"}
    given = {**kept, **given}
    want, got = jax.tree.map(jnp.shape, kept), jax.tree.map(jnp.shape, given)
    if want != got:
        raise ConfigError(
            "variables",
            f"variables do not fit the model: it has {_describe(want)}; got {_describe(got)}",
        )
    return jax.tree.map(lambda v, i: jnp.asarray(v, i.dtype), given, kept)


def _describe(shapes: dict) -> str:
    leaves = jax.tree_util.tree_leaves_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
    text = ", ".join(f"{jax.tree_util.keystr(p)}: {list(s)}" for p, s in leaves)
    return text[:600]


def zero_state(apply_fn, calls: calls_lib.Calls, params, model_state, x) -> Any:
    """The state, all zeros, that a model which ``carries_state`` starts a batch like ``x``
    from (the structure its ``return_state`` gives)."""

    def final_state(params, x):
        variables = {"params": params, **model_state}
        rngs = calls_lib.eval_rngs(0)
        out, _ = calls_lib.apply(
            apply_fn, calls, variables, x, train=False, rngs=rngs, return_state=True
        )
        return out[1]

    shapes = jax.eval_shape(final_state, params, x)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def train_step(
    state,
    batch: dict[str, jax.Array],
    carry: Any = None,
    *,
    mesh: Mesh,
    task: tasks.Task = tasks.TASKS["classify"],
    sequence: str = "rows",
    calls: calls_lib.Calls = calls_lib.Calls(),
    seed: int = 0,
    needs_loss: bool = False,
):
    """One optimizer step on ``batch``; returns ``(state, sums, loss)``, and the model's
    state after the batch when a ``carry`` (its state before it) is given: a text read as
    streams, each window starting where the previous one ended (gradients stop there).

    ``batch`` holds ``image`` (``uint8 [B, H, W, C]``, read as ``sequence``, float
    sequences ``[B, T, F]`` or token ids ``[B, T]``), ``label`` (the ``task``'s targets,
    ``[B]`` or ``[B, T]``), ``weight`` (``[B]``, 0 for padding) and, for sequences of given
    lengths, ``length`` (``[B]``: the model gets ``mask=``, and per-step targets past a
    sequence's length count for nothing); ``sums`` is the task's ``[loss_sum, metric_sum,
    count]`` over the weighted examples (or steps, or values). The model is called as
    ``calls`` says (``lstm_jax.training.calls``), with this step's keys (``calls.step_rngs``: from
    ``seed``, the step and the device); ``needs_loss``: the optimizer's update takes the loss.

    The loss is the mean over the batch's real examples, as Keras averages a smaller
    final batch over its own examples.

    Data parallel over ``mesh``: each device computes the gradient of its own slice of
    the batch (``jax.shard_map``), and the gradients, sums and updated collections are
    added across devices (the collections then averaged). The model then runs on
    per-device arrays, so the LSTM's backward pass keeps its weight-gradient sum on the
    device for all time steps; left to XLA's automatic partitioning, that sum was
    all-reduced at every step (``benchmarks/NOTES.md``). ``check_vma=False``: a module may
    scan over a carry it makes itself, which JAX's varying-axes check would refuse; the
    program compiled for lstm_jax's own models is the same either way.
    """

    state, sums, loss, _, carry = _train_step(
        state,
        batch,
        carry,
        mesh=mesh,
        task=task,
        sequence=sequence,
        calls=calls,
        seed=seed,
        needs_loss=needs_loss,
    )
    return (state, sums, loss) if carry is None else (state, sums, loss, carry)


def _train_step(state, batch, carry, *, mesh, task, sequence, calls, seed, needs_loss, skip=None):
    """``train_step``'s ``(state, sums, loss, taken, carry)``. With ``skip`` (a boolean
    scalar), the update is ``taken`` only where ``skip`` is false and the loss and the global
    norm of the batch's summed gradients are finite (a norm beyond float32's range means
    gradients no run recovers from, which would overflow Adam's second moment), and
    otherwise the state comes back as it was. The choice is made before the update, which
    then runs or not (``lax.cond``), so that no step reads and writes every parameter and
    moment once more to choose between two states (``benchmarks/NOTES.md``). Without
    ``skip``, ``taken`` is ``None``."""
    grads_and_sums = functools.partial(
        _device_gradients,
        apply_fn=state.apply_fn,
        calls=calls,
        task=task,
        sequence=sequence,
        seed=seed,
    )
    model_state = getattr(state, "model_state", {})
    args = (state.params, model_state, batch, state.step)
    in_specs, out_specs = (P(), P(), P("data"), P()), P()
    if carry is not None:  # each device carries the state of its own rows (streams)
        args, in_specs = (*args, carry), (*in_specs, P("data"))
        out_specs = (P(), P(), P(), P("data"))
    out = jax.shard_map(
        grads_and_sums, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )(*args)
    grads, sums, updated = out[:3]
    count = jnp.maximum(sums[2], 1)
    loss = sums[0] / count

    def update(state):
        mean_grads = jax.tree.map(lambda g: g / count, grads)
        extra = {"value": loss} if needs_loss else {}  # reduce_on_plateau's
        updates, opt_state = state.tx.update(mean_grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if calls.collections:
            new = new.replace(model_state=jax.tree.map(lambda v: v / mesh.size, updated))
        return new

    taken = None
    if skip is None:
        new = update(state)
    else:
        taken = ~skip & jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        new = jax.lax.cond(taken, update, lambda state: state, state)
    return new, sums, loss, taken, (out[3] if carry is not None else None)


def _device_gradients(
    params, model_state, batch, step, carry=None, *, apply_fn, calls, task, sequence, seed
):
    """One device's slice of ``train_step``, inside ``jax.shard_map``: the gradient of its
    examples' loss sum, their sums and the updated collections, each summed across devices
    (and the state its own rows end in, when they carry one)."""
    x = data_lib.to_sequences(batch["image"], sequence)  # [B, T, F] (or ids [B, T])
    mask = calls_lib.lengths_mask(batch["length"], x.shape[1]) if "length" in batch else None
    rngs = calls_lib.step_rngs(seed, step, jax.lax.axis_index("data"))
    # Each device's own gradient (shard_map would otherwise sum each parameter's
    # gradient across devices itself, one all-reduce operand per array).
    params = jax.tree.map(lambda p: _jax_compat.pvary(p, ("data",)), params)

    def loss_sum(params):
        variables = {"params": params, **model_state}
        logits, updated, state = calls_lib.apply_from(
            apply_fn, calls, variables, x, carry, train=True, rngs=rngs, mask=mask
        )  # logits: [B, classes] (or [B, T, classes], or values)
        sums = task.sums(logits, batch["label"], batch["weight"], mask)
        return sums[0], (sums, updated, state)

    grads, (sums, updated, state) = jax.grad(loss_sum, has_aux=True)(params)
    summed = _psum_tree((grads, sums, updated))
    return summed if carry is None else (*summed, jax.lax.stop_gradient(state))


# Arrays of this many elements or more are summed across devices each on its own.
_OWN_ALL_REDUCE_FROM = 1 << 16


def _psum_tree(tree):
    """``tree`` summed across the devices of the data axis.

    XLA:CPU's all-reduce meets the other devices once per operand, and each meeting waits,
    so the small arrays (biases, sums, most of a small model) go as one flat vector. The large
    ones (``_OWN_ALL_REDUCE_FROM`` elements or more) go each on its own, out of that vector:
    XLA fuses its concatenation with the gradients' last operations, a fusion that can cost
    more than the rest of the step (``benchmarks/NOTES.md``). On one device nothing is
    summed."""
    if jax.lax.axis_size("data") == 1:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    large = [jnp.size(leaf) >= _OWN_ALL_REDUCE_FROM for leaf in leaves]
    flat, unflatten = jax.flatten_util.ravel_pytree(
        [leaf for leaf, big in zip(leaves, large, strict=True) if not big]
    )
    summed_small = iter(unflatten(jax.lax.psum(flat, "data")))
    summed_large = iter(
        jax.lax.psum([leaf for leaf, big in zip(leaves, large, strict=True) if big], "data")
    )
    summed = [next(summed_large if big else summed_small) for big in large]
    return jax.tree.unflatten(treedef, summed)


def make_epoch_fns(
    config: Config,
    model: nn.Module,
    mesh: Mesh,
    n_train: int,
    on_step: Callable[[int, float, float], None] | None = None,
    calls: calls_lib.Calls | None = None,
    *,
    task: tasks.Task = tasks.TASKS["classify"],
    streams: bool = False,
):
    """``(make_train_epoch(...), make_evaluate(...))`` for one run, calling ``model`` as
    ``calls`` says (by default, as its ``__call__``'s signature says, with no collections)."""
    calls = calls_lib.calls_of(model) if calls is None else calls
    train_epoch = make_train_epoch(
        config, model, mesh, n_train, on_step, calls, task=task, streams=streams
    )
    return train_epoch, make_evaluate(config, model, mesh, calls, task=task, streams=streams)


def make_train_epoch(
    config: Config,
    model: nn.Module,
    mesh: Mesh,
    n_train: int,
    on_step: Callable[[int, float, float], None] | None,
    calls: calls_lib.Calls,
    *,
    task: tasks.Task = tasks.TASKS["classify"],
    streams: bool = False,
):
    """The jitted ``train_epoch(state, batches) -> (state, sums, bad_step)``: a whole epoch
    as one ``lax.scan`` over ``batches`` (``batches_on_mesh`` of the training split in
    ``epoch_order(seed, epoch, n)``, or with ``streams``, ``stream_batches``: row ``r`` of
    every batch continues row ``r`` of the one before, and the model's state is carried from
    each batch to the next, from zeros at the epoch's start). ``sums`` is the ``task``'s
    ``[loss_sum, metric_sum, count]`` over the steps before ``bad_step``; ``bad_step`` is
    ``-1``, or the first step whose loss, gradients or updated parameters were not finite.
    From that step on, nothing is updated: a step whose loss or gradients were not finite
    leaves the state as it was before it; one whose update overflowed (finite gradients, a
    learning rate near float32's limit) leaves its parameters.

    ``on_step(step, loss_sum, count)``, if given, is called from inside the jitted epoch
    (``jax.debug.callback``) about 50 times an epoch and after its last step, e.g. to draw a
    progress bar.
    """
    report_every = max(1, -(-n_train // config.batch_size) // 50)
    step = functools.partial(
        _train_step,
        mesh=mesh,
        task=task,
        sequence=config.sequence,
        calls=calls,
        seed=config.seed,
        needs_loss=optim.needs_loss(config),
    )

    def train_epoch(state, batches):
        steps = batches["label"].shape[0]

        def body(carry, xs):
            state, sums, bad_step, model_carry = carry
            i, batch = xs
            new_state, batch_sums, _, taken, model_carry = step(
                state, batch, model_carry, skip=bad_step >= 0
            )
            ok = taken & _all_finite(new_state.params)
            bad_step = jnp.where((bad_step < 0) & ~ok, state.step, bad_step)
            sums = sums + jnp.where(ok, batch_sums, 0)
            state = new_state
            if on_step is not None:
                jax.lax.cond(
                    (i % report_every == 0) | (i == steps - 1),
                    lambda: jax.debug.callback(on_step, i, sums[0], sums[2]),
                    lambda: None,
                )
            return (state, sums, bad_step, model_carry), None

        model_carry = None
        if streams:
            first = data_lib.to_sequences(batches["image"][0], config.sequence)
            model_state = getattr(state, "model_state", {})
            model_carry = zero_state(state.apply_fn, calls, state.params, model_state, first)
        init = (state, jnp.zeros(3, jnp.float32), jnp.array(-1, state.step.dtype), model_carry)
        (state, sums, bad_step, _), _ = jax.lax.scan(body, init, (jnp.arange(steps), batches))
        return state, sums, bad_step

    return jax.jit(train_epoch, donate_argnums=0, out_shardings=sharding.replicated(mesh))


def _all_finite(tree) -> jax.Array:
    """Whether every element of ``tree`` is finite, as one float sum (XLA:CPU reduces floats
    several times faster than booleans): of the elements scaled by 2^-100, below 2.7e8 each
    when finite, so that no sum of finite ones overflows, while an infinity or a NaN carries
    through."""
    scaled = [jnp.sum(x.astype(jnp.float32) * 2.0**-100) for x in jax.tree.leaves(tree)]
    return jnp.isfinite(sum(scaled))


def make_evaluate(
    config: Config,
    model: nn.Module,
    mesh: Mesh,
    calls: calls_lib.Calls,
    *,
    task: tasks.Task = tasks.TASKS["classify"],
    streams: bool = False,
):
    """The jitted ``evaluate(params, batches, model_state=None) -> sums`` (the ``task``'s
    ``[loss_sum, metric_sum, count]``) over a split's batches (``sharding.eval_batches``:
    fixed order, of ``eval_batch_size``; with ``streams``, ``stream_batches``, the model's
    state carried from each batch to the next), the model in evaluation mode: the one
    evaluation program, which ``Evaluator`` runs for the epoch loop, ``evaluate_params`` and
    ``Run.evaluate``."""

    def evaluate(params, batches, model_state=None):
        variables = {"params": params, **(model_state or {})}
        rngs = calls_lib.eval_rngs(config.seed)  # once, outside the scan

        def body(carry, batch):
            sums, state = carry
            x = data_lib.to_sequences(batch["image"], config.sequence)
            mask = None
            if "length" in batch:
                mask = calls_lib.lengths_mask(batch["length"], x.shape[1])
            logits, _, state = calls_lib.apply_from(
                model.apply, calls, variables, x, state, train=False, rngs=rngs, mask=mask
            )
            sums = sums + task.sums(logits, batch["label"], batch["weight"], mask)
            return (sums, state), None

        state = None
        if streams:
            first = data_lib.to_sequences(batches["image"][0], config.sequence)
            state = zero_state(model.apply, calls, params, model_state or {}, first)
        (sums, _), _ = jax.lax.scan(body, (jnp.zeros(3, jnp.float32), state), batches)
        return sums

    return jax.jit(evaluate, out_shardings=sharding.replicated(mesh))


def eval_logits(model, calls: calls_lib.Calls, variables, x, *, rngs, mask=None):
    """``model``'s logits in evaluation mode (``calls``' switch off; ``rngs``, the fixed keys
    of ``calls.eval_rngs``, for any stream it draws): as evaluation and ``Run.logits``
    compute them."""
    return calls_lib.apply(model.apply, calls, variables, x, train=False, rngs=rngs, mask=mask)[0]


class Evaluator:
    """One model's evaluation on held-out splits, the one way the epoch loop,
    ``evaluate_params`` (``train.py --evaluate``) and ``Run.evaluate`` evaluate: each split's
    batches placed on ``mesh`` once, the program compiled once."""

    def __init__(
        self,
        config: Config,
        model: nn.Module,
        mesh: Mesh,
        calls: calls_lib.Calls,
        *,
        task: tasks.Task = tasks.TASKS["classify"],
        streams: bool = False,
    ):
        self.config, self.mesh, self.task, self.streams = config, mesh, task, streams
        self.program = make_evaluate(config, model, mesh, calls, task=task, streams=streams)
        self._batches: dict[str, Any] = {}

    def sums(self, name: str, split: data_lib.Split, params, model_state=None) -> jax.Array:
        """The task's ``[loss_sum, metric_sum, count]`` over ``split`` (called ``name``), on
        the mesh."""
        if name not in self._batches:
            if self.streams:
                batches = sharding.stream_batches(split, self.config.batch_size, self.mesh)
            else:
                batches = sharding.eval_batches(split, self.config, self.mesh)
            self._batches[name] = batches
        return self.program(params, self._batches[name], model_state or {})

    def __call__(self, name: str, split: data_lib.Split, params, model_state=None) -> dict:
        """``{"split", "examples", "loss", METRIC, ...}`` of ``split``: the task's numbers
        (``tasks.Task.rates``)."""
        numbers = self.task.rates(jax.device_get(self.sums(name, split, params, model_state)))
        return {"split": name, "examples": len(split), **numbers}


def examples_per_epoch(n_train: int, batch_size: int, calls: calls_lib.Calls) -> int:
    """How many of ``n_train`` examples each epoch trains on: all, the last batch padded
    with examples of weight 0; or, for a model that keeps collections (``nn.BatchNorm``'s
    batch statistics, which the padding would enter), whole batches only, as the flax
    examples train (TFDS's ``drop_remainder``): those left out differ from epoch to epoch."""
    return n_train - n_train % batch_size if calls.collections else n_train


def rates(sums) -> tuple[float, float]:
    loss_sum, correct, count = (float(v) for v in sums)
    return loss_sum / max(count, 1), correct / max(count, 1)


def load_data(
    config: Config, data: data_lib.Dataset | None = None
) -> tuple[data_lib.Dataset, data_lib.Split]:
    """The data set (``data``, or the one ``config`` names), and its training split cut to
    ``max_train_examples``."""
    ds = data
    if ds is None:
        ds = data_lib.load(
            config.dataset,
            data_dir=config.data_dir,
            validation_split=config.validation_split,
            download=config.download,
            bptt=config.bptt,
        )
    if config.task is not None and ds.task != config.task:
        raise ConfigError(
            "task",
            f"task {config.task}: {ds.name} is data for task {ds.task} (text is read by "
            "next_token; images are classified; your own arrays by the task you made them "
            "for)",
        )
    train = ds.train
    for name, split in (("validation", ds.validation), ("test", ds.test)):
        if len(split) == 0:
            raise ConfigError(
                "data",
                f"data: the {name} split of {ds.name} is empty; every epoch is validated and the "
                "run tested (give a validation_split above 0, and test examples)",
            )
    if config.max_train_examples is not None:
        train = train.head(config.max_train_examples)
    if config.batch_size > len(train):
        raise ConfigError(
            "batch_size",
            f"batch_size {config.batch_size} is larger than the {len(train)} training examples",
        )
    return ds, train


def evaluate_params(
    config: Config,
    model: nn.Module,
    params: Any,
    split: str = "test",
    *,
    data_dir: str | None = None,
    download: bool = True,
    data: data_lib.Dataset | None = None,
    model_state: dict | None = None,
) -> dict[str, Any]:
    """The task's numbers (loss and accuracy, for a classifier) of ``model`` with ``params``
    (and its collections, ``model_state``) on a split (``train``, ``validation`` or
    ``test``) of ``data`` or ``config``'s data set, read as the run read it, data parallel
    over every device: ``{"split", "examples", "loss", "accuracy", ...}``. ``data_dir`` and
    ``download`` override the config's."""
    splits = ("train", "validation", "test")
    if split not in splits:
        raise ConfigError("split", f"split must be one of {', '.join(splits)}; got {split!r}")
    config = dataclasses.replace(config, data_dir=data_dir or config.data_dir, download=download)
    ds, train = load_data(config, data)
    examples = {"train": train, "validation": ds.validation, "test": ds.test}[split]
    mesh = sharding.data_mesh()
    input_shape = data_lib.sequence_shape(train.images.shape[1:], config.sequence)
    calls = model_calls(model, input_shape)
    task = tasks.TASKS[ds.task]
    streams = ds.vocabulary is not None and config.windows == "streams" and calls.carries_state
    evaluator = Evaluator(config, model, mesh, calls, task=task, streams=streams)
    params, model_state = jax.device_put((params, model_state or {}), sharding.replicated(mesh))
    return evaluator(split, examples, params, model_state)
