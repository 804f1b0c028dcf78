"""Training and evaluation on sequential image data: the library behind ``train.py``.

``train_and_evaluate(config, workdir)`` runs the lesson by default: LSTM(50) then Dense(10)
on MNIST read row by row, softmax cross-entropy, Adam at 1e-3, batch 128, 3 epochs, the
last 20% of the training set held out for validation, then the test set.

How it runs:

* The data set is loaded once and kept on the host as ``uint8``. Each epoch's order is
  drawn by NumPy from the run's seed and the epoch number (``epoch_order``), as Keras
  shuffles, and the epoch's batches are placed on the devices before it starts
  (``batches_on_mesh``): each device receives only its slice of every batch.
  (``jax.random``'s permutation sorts, which is slow to run and to compile on a CPU.)
* A whole epoch is one jitted call (``train_epoch``): a ``lax.scan`` over batches, with the
  training state donated, compiled once per run.
* Data parallel over every device JAX sees: a one-axis mesh ``("data",)``, each batch split
  across it, parameters and optimizer state replicated; each device computes the gradient
  of its slice (``jax.shard_map``), and the gradients are summed across devices. The same
  code serves one device, several, and several processes on one or many hosts
  (``lstm_jax.distributed``; ``Config.distributed``): each process gathers and places only
  its own devices' slices, from the same order, so N processes train the same model as one
  process with as many devices. Process 0 writes the run's files and prints; all write the
  checkpoints together, as orbax does across processes.
* An orbax checkpoint at every epoch end; ``Config.resume`` continues from the newest one.

The parts, each usable alone: ``train_step`` (one optimizer step), ``make_epoch_fns`` (the
jitted ``train_epoch`` and ``evaluate``), ``train_and_evaluate`` (the run: data, model,
epochs, checkpoints, metrics.json, curves.png).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lstm_jax import _jax_compat, distributed, recurrent, runs, shutdown
from lstm_jax import data as data_lib
from lstm_jax import nn as lnn
from lstm_jax import params as params_lib
from lstm_jax.checkpoints import Checkpointer, CheckpointError, finished_epochs

CELLS = tuple(recurrent.CELLS)
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")
PRECISIONS = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A setting is out of range; the message starts with its name (``setting``) and says
    what is allowed."""

    def __init__(self, setting: str, message: str, *, others: tuple[str, ...] = ()):
        self.setting, self.others = setting, others
        super().__init__(message)

    def with_flag(self) -> str:
        """The message with the setting named as ``train.py``'s flag (``--batch-size``), and
        so ``others``, each named after a ``"; "``."""
        text = str(self)
        if text.startswith(self.setting):
            text = "--" + self.setting.replace("_", "-") + text[len(self.setting) :]
        for name in self.others:
            text = text.replace(f"; {name} ", f"; --{name.replace('_', '-')} ", 1)
        return text


class TrainingDiverged(RuntimeError):
    """A loss or the parameters became NaN or infinite; nothing of that epoch was saved.

    ``step`` is the first optimizer step whose loss or update was not finite (``None`` when
    the training epoch was finite and its validation pass was not); ``epoch`` that epoch.
    """

    def __init__(self, step: int | None, epoch: int, kept: str):
        self.step, self.epoch = step, epoch
        what = (
            f"the loss or the parameters became NaN or infinite at step {step} (epoch {epoch})"
            if step is not None
            else f"the validation loss became NaN or infinite after epoch {epoch}"
        )
        super().__init__(
            f"{what}; training stopped and epoch {epoch} was not saved. {kept} Try a lower "
            "learning_rate."
        )


class RunFileError(RuntimeError):
    """A run's file cannot be written (a full disk, a path not writable); says which."""


class DeviceError(RuntimeError):
    """JAX cannot start the devices asked for (``JAX_PLATFORMS``); says what to do."""


def devices() -> list[jax.Device]:
    """``jax.devices()``, with any failure to start the platforms asked for reported as
    ``DeviceError`` (JAX raises ``RuntimeError`` for most, ``AssertionError`` for a platform
    its install does not know, such as ``cuda`` without the CUDA plugin)."""
    try:
        return jax.devices()
    except Exception as e:
        asked = os.environ.get("JAX_PLATFORMS")
        hint = (
            f" JAX_PLATFORMS={asked!r} asks for a platform this machine or this jax install "
            "lacks (an NVIDIA GPU needs pip install 'jax[cuda12]'); unset it to use what is here."
            if asked
            else ""
        )
        reason = (str(e).strip().splitlines() or [f"{type(e).__name__} in jax.devices()"])[0]
        raise DeviceError(f"JAX cannot start its devices: {reason}.{hint}") from None


# Errors that ``train.py`` reports as one line and a non-zero exit, without a traceback.
USER_ERRORS = (
    ConfigError,
    data_lib.DataError,
    CheckpointError,
    TrainingDiverged,
    DeviceError,
    RunFileError,
    distributed.DistributedError,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; the defaults are the lesson's recipe."""

    cell: str = "lstm"
    units: tuple[int, ...] = (50,)
    bidirectional: bool = False
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    dataset: str = "mnist"
    sequence: str = "rows"
    validation_split: float = 0.2
    seed: int = 0
    data_dir: str | None = None
    download: bool = True
    precision: str = "float32"
    resume: bool = False
    distributed: bool = False
    progress: bool = True
    # Cap on training examples; None uses them all. For quick runs (notebooks, smoke tests).
    max_train_examples: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "units", tuple(self.units))

    def validate(self) -> None:
        def need(ok: bool, setting: str, allowed: str):
            if not ok:
                value = getattr(self, setting)
                value = list(value) if isinstance(value, tuple) else value
                raise ConfigError(setting, f"{setting} must be {allowed}; got {value!r}")

        def one_of(options) -> str:
            return "one of " + ", ".join(options)

        need(self.cell in CELLS, "cell", one_of(CELLS))
        need(
            len(self.units) > 0 and all(isinstance(u, int) and u > 0 for u in self.units),
            "units",
            "positive ints (e.g. 50 or 128,64)",
        )
        need(self.epochs > 0, "epochs", "a positive int")
        need(self.batch_size > 0, "batch_size", "a positive int")
        need(
            0 < self.learning_rate <= np.finfo(np.float32).max,
            "learning_rate",
            "positive and finite in float32 (at most 3.4e38)",
        )
        need(self.optimizer in OPTIMIZERS, "optimizer", one_of(OPTIMIZERS))
        need(0 <= self.seed < 2**32, "seed", "an int from 0 to 2**32 - 1")
        need(self.sequence in data_lib.SEQUENCES, "sequence", one_of(data_lib.SEQUENCES))
        need(0 < self.validation_split < 1, "validation_split", "strictly between 0 and 1")
        need(self.precision in PRECISIONS, "precision", one_of(PRECISIONS))
        need(
            self.max_train_examples is None or self.max_train_examples > 0,
            "max_train_examples",
            "positive",
        )


# Settings a resumed run may change; every other one stays as the run was started.
RESUMABLE = (
    "epochs",
    "learning_rate",
    "progress",
    "data_dir",
    "download",
    "distributed",
    "resume",
)


def check_resume(saved: Config, config: Config, epochs_done: int) -> None:
    """Refuses to resume a run saved with ``saved`` under ``config`` if any setting outside
    ``RESUMABLE`` differs, or ``config.epochs`` is below the epochs already done.

    Raises:
      ConfigError: names every such setting, with the run's value.
    """
    changed = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if changed:

        def show(v):
            return ",".join(map(str, v)) if isinstance(v, tuple) else v

        pairs = "; ".join(
            f"{n} {show(getattr(config, n))} (the run's: {show(getattr(saved, n))})"
            for n in changed
        )
        raise ConfigError(
            changed[0],
            f"{pairs}: a resumed run keeps the settings it was started with; only "
            f"{', '.join(n for n in RESUMABLE if n != 'resume')} may change. Start a new run "
            "in another workdir for other settings.",
            others=tuple(changed[1:]),
        )
    if config.epochs < epochs_done:
        raise ConfigError(
            "epochs",
            f"epochs {config.epochs} is fewer than the {epochs_done} the run has finished; "
            f"give at least {epochs_done} (equal: nothing to train, the run is only tested).",
        )


def resume_config(workdir: str | os.PathLike, **changes: Any) -> Config:
    """The ``Config`` of the run in ``workdir``, with ``changes`` (settings in
    ``RESUMABLE``; others are accepted when equal to the run's) and ``resume=True``.

    Reads files only, so it can run before JAX starts its backends.

    Raises:
      CheckpointError: no run to resume there; ConfigError: a change not allowed.
    """
    _, epoch, meta = runs.read_meta(workdir)  # writes nothing: the run may be read-only
    saved = Config(**meta["config"])
    try:
        config = dataclasses.replace(saved, **{**changes, "resume": True})
    except TypeError as e:
        raise ConfigError("resume", f"resume_config: {e}") from None
    config.validate()
    check_resume(saved, config, len(meta["history"][:epoch]))
    return config


# --------------------------------------------------------------------------------------
# Model, optimizer, state
# --------------------------------------------------------------------------------------


def make_model(config: Config, num_classes: int) -> nn.Module:
    dtype = jnp.bfloat16 if config.precision == "bfloat16" else None
    return lnn.Classifier(
        cell=config.cell,
        units=config.units,
        num_classes=num_classes,
        bidirectional=config.bidirectional,
        dtype=dtype,
    )


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Keras's defaults for each optimizer (epsilon 1e-7, RMSprop rho 0.9, AdamW decay 0.004).

    The optimizer runs on all parameters as one flat vector (``optax.flatten``; its state,
    e.g. Adam's moments, is flat too): the same elementwise update, but XLA compiles a few
    kernels for it instead of a few per parameter array, so the epoch compiles faster
    (``benchmarks/NOTES.md``).
    """
    lr = config.learning_rate
    optimizer = {
        "adam": lambda: optax.adam(lr, eps=1e-7),
        "sgd": lambda: optax.sgd(lr),
        "rmsprop": lambda: optax.rmsprop(lr, decay=0.9, eps=1e-7),
        "adamw": lambda: optax.adamw(lr, eps=1e-7, weight_decay=0.004),
    }[config.optimizer]()
    return optax.flatten(optimizer)


def create_train_state(
    config: Config, model: nn.Module, input_shape: tuple[int, int]
) -> train_state.TrainState:
    """Initialises parameters from ``config.seed`` (as Keras would) and the optimizer."""
    key = jax.random.fold_in(jax.random.key(config.seed), 0)
    # Jitted: one XLA compilation, not one per operation run eagerly (whose executables
    # stay cached, in memory). The values are the same.
    params = jax.jit(model.init)(key, jnp.zeros((1, *input_shape), jnp.float32))["params"]
    return train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=make_optimizer(config)
    )


# --------------------------------------------------------------------------------------
# Steps and epochs
# --------------------------------------------------------------------------------------


def _loss_and_metrics(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    """Per-example softmax cross-entropy; returns sums (loss, correct, count) over the
    weighted examples (padding has weight 0).

    Computed against one-hot labels, as Keras's ``sparse_categorical_crossentropy`` does:
    its gradient is then elementwise, where picking each row's label (``take_along_axis``)
    differentiates into a gather and a scatter, four more kernels for XLA to compile.
    """
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)  # [B, classes]
    losses = optax.softmax_cross_entropy(logits, one_hot)  # [B]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.stack([jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)])


def train_step(state, batch: dict[str, jax.Array], *, mesh: Mesh, sequence: str = "rows"):
    """One optimizer step on ``batch``; returns ``(state, sums, loss)``.

    ``batch`` holds ``image`` (``uint8 [B, H, W, C]``, read as ``sequence``), ``label``
    (``[B]``) and ``weight`` (``[B]``, 0 for padding); ``sums`` is ``[loss_sum, correct,
    count]`` over the weighted examples.

    The loss is the mean over the batch's real examples, as Keras averages a smaller
    final batch over its own examples.

    Data parallel over ``mesh``: each device computes the gradient of its own slice of
    the batch (``jax.shard_map``), and the gradients and sums are added across devices.
    The model then runs on per-device arrays, so the LSTM's backward pass keeps its
    weight-gradient sum on the device for all time steps; left to XLA's automatic
    partitioning, that sum was all-reduced at every step (``benchmarks/NOTES.md``).
    """

    def grads_and_sums(params, images, labels, weights):
        x = data_lib.to_sequences(images, sequence)  # [B, T, F]
        # Each device's own gradient (shard_map would otherwise sum each parameter's
        # gradient across devices itself, one all-reduce operand per array).
        params = jax.tree.map(lambda p: _jax_compat.pvary(p, ("data",)), params)

        def loss_sum(params):
            logits = state.apply_fn({"params": params}, x)  # [B, classes]
            sums = _loss_and_metrics(logits, labels, weights)
            return sums[0], sums

        grads, sums = jax.grad(loss_sum, has_aux=True)(params)
        # Gradients and sums summed across devices as one flat vector: XLA:CPU's
        # all-reduce meets the other devices once per operand, and each meeting waits.
        flat, unflatten = jax.flatten_util.ravel_pytree((grads, sums))
        return unflatten(jax.lax.psum(flat, "data"))

    split = P("data")
    grads, sums = jax.shard_map(
        grads_and_sums, mesh=mesh, in_specs=(P(), split, split, split), out_specs=P()
    )(state.params, batch["image"], batch["label"], batch["weight"])
    count = jnp.maximum(sums[2], 1)
    grads = jax.tree.map(lambda g: g / count, grads)
    return state.apply_gradients(grads=grads), sums, sums[0] / count


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` training examples: ``int32 [n]``.

    A permutation drawn by NumPy from ``(seed, epoch)`` alone, so that a resumed run, and
    every process of a multi-host run, draws the same one.

    >>> sorted(epoch_order(0, 1, 5)) == list(range(5))
    True
    >>> bool((epoch_order(0, 1, 100) == epoch_order(0, 2, 100)).all())  # each epoch its own
    False
    """
    return np.random.default_rng((seed, epoch)).permutation(n).astype(np.int32)


def batches_on_mesh(
    split: data_lib.Split, order: np.ndarray, batch_size: int, mesh: Mesh
) -> dict[str, jax.Array]:
    """The examples of ``split`` in ``order`` as batches on ``mesh``: ``image`` (``uint8
    [steps, batch, H, W, C]``), ``label`` and ``weight`` (``[steps, batch]``), the last
    batch padded with weight 0, each batch split across the mesh's devices
    (``P(None, "data")``).

    Each process gathers, from its own copy of ``split`` on the host, only the examples of
    its own devices' slices, and places only those: several processes given the same
    ``order`` make the same global batches as one process would.
    """
    n = len(order)
    steps = -(-n // batch_size)
    index = np.zeros(steps * batch_size, np.int32)
    index[:n] = order
    index = index.reshape(steps, batch_size)
    weight = (np.arange(steps * batch_size) < n).astype(np.float32).reshape(steps, batch_size)
    sharding = NamedSharding(mesh, P(None, "data"))

    def place(array):
        shape = (steps, batch_size, *array.shape[1:])
        return jax.make_array_from_callback(
            shape, sharding, lambda i: data_lib.gather(array, index[i[:2]])
        )

    return {
        "image": place(split.images),
        "label": place(split.labels),
        "weight": jax.make_array_from_callback(weight.shape, sharding, lambda i: weight[i]),
    }


def eval_batch_size(config: Config, mesh: Mesh) -> int:
    """The batch that evaluation runs in: at least 1024, a multiple of the mesh's size."""
    batch = max(1024, config.batch_size)
    return batch - batch % mesh.size


class _Progress:
    """A tqdm bar per epoch, fed from inside the jitted epoch by ``jax.debug.callback``."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.start = 0.0
        self.batch_size = 1

    def open(self, epoch: int, epochs: int, steps: int, batch_size: int):
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        # disable=None: no bar where output is not a terminal (CI logs), as tqdm advises.
        self.bar = tqdm(
            total=steps,
            desc=f"epoch {epoch}/{epochs}",
            unit="step",
            leave=False,
            file=sys.stdout,
            dynamic_ncols=True,
            disable=None,
        )
        self.start, self.batch_size = time.perf_counter(), batch_size

    def update(self, step, loss_sum, count):
        if self.bar is None:
            return
        step = int(step) + 1
        rate = step * self.batch_size / max(time.perf_counter() - self.start, 1e-9)
        self.bar.n = step
        self.bar.set_postfix(
            loss=f"{float(loss_sum) / max(float(count), 1):.4f}",
            samples_per_s=f"{rate:,.0f}",
            refresh=False,
        )
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def make_epoch_fns(
    config: Config,
    model: nn.Module,
    mesh: Mesh,
    n_train: int,
    on_step: Callable[[int, float, float], None] | None = None,
):
    """Builds the jitted ``train_epoch`` and ``evaluate`` for one run.

    ``on_step(step, loss_sum, count)``, if given, is called from inside the jitted epoch
    (``jax.debug.callback``) about 50 times an epoch and after its last step, e.g. to draw a
    progress bar.

    ``train_epoch(state, batches) -> (state, sums, bad_step)`` runs a whole epoch as one
    ``lax.scan`` over ``batches`` (``batches_on_mesh`` of the training split in
    ``epoch_order(seed, epoch, n)``). ``sums`` is ``[loss_sum, correct, count]``;
    ``bad_step`` is ``-1``, or the first step whose loss or updated parameters were not
    finite, after which the state is left as it was before that step.

    ``evaluate(params, batches) -> sums`` runs over a split's batches (in fixed order, of
    ``eval_batch_size``).
    """
    replicated = NamedSharding(mesh, P())
    report_every = max(1, -(-n_train // config.batch_size) // 50)

    def train_epoch(state, batches):
        steps = batches["label"].shape[0]

        def body(carry, xs):
            state, sums, bad_step = carry
            i, batch = xs
            new_state, batch_sums, loss = train_step(
                state, batch, mesh=mesh, sequence=config.sequence
            )
            finite = jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(new_state.params)])
            ok = jnp.isfinite(loss) & finite.all() & (bad_step < 0)
            state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
            bad_step = jnp.where((bad_step < 0) & ~ok, state.step, bad_step)
            sums = sums + jnp.where(ok, batch_sums, 0)
            if on_step is not None:
                jax.lax.cond(
                    (i % report_every == 0) | (i == steps - 1),
                    lambda: jax.debug.callback(on_step, i, sums[0], sums[2]),
                    lambda: None,
                )
            return (state, sums, bad_step), None

        init = (state, jnp.zeros(3, jnp.float32), jnp.array(-1, state.step.dtype))
        (state, sums, bad_step), _ = jax.lax.scan(body, init, (jnp.arange(steps), batches))
        return state, sums, bad_step

    def evaluate(params, batches):
        def body(sums, batch):
            x = data_lib.to_sequences(batch["image"], config.sequence)
            logits = model.apply({"params": params}, x)
            return sums + _loss_and_metrics(logits, batch["label"], batch["weight"]), None

        sums, _ = jax.lax.scan(body, jnp.zeros(3, jnp.float32), batches)
        return sums

    train_epoch = jax.jit(train_epoch, donate_argnums=0, out_shardings=replicated)
    evaluate = jax.jit(evaluate, out_shardings=replicated)
    return train_epoch, evaluate


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _check_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """The absolute ``workdir``, if it is (or can be made) a writable directory; creates
    nothing, so that a run refused before training leaves nothing behind."""
    path = pathlib.Path(workdir).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError("workdir", f"workdir {workdir} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("workdir", f"workdir {workdir} cannot be written: {existing} is not")
    return path


def _make_workdir(path: pathlib.Path) -> None:
    if (path / "checkpoints").exists() and not (path / "checkpoints").is_dir():
        raise ConfigError(
            "workdir",
            f"workdir {path} holds a file named checkpoints, where the run's checkpoints "
            "directory goes: move it, or choose another workdir",
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test-{os.getpid()}"  # one per process: several may share it
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            "workdir", f"workdir {path} cannot be written: {e.strerror or e}"
        ) from None


def _missing(workdir: pathlib.Path) -> list[pathlib.Path]:
    """What a run in ``workdir`` creates and is not there yet: the lock file, the checkpoints
    directory, ``workdir`` and its missing parents, innermost first."""
    paths = [workdir / ".lock", workdir / "checkpoints", workdir, *workdir.parents]
    return [p for p in paths if not p.exists()]


def _remove_unless_saved(workdir: pathlib.Path, new_paths: list[pathlib.Path]) -> None:
    """After a run that failed before its first checkpoint: removes ``new_paths`` (see
    ``_missing``), directories only while empty, so that a refused run leaves nothing."""
    if finished_epochs(workdir / "checkpoints"):
        return
    for path in new_paths:
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()


class WorkdirLock:
    """One run at a time in a workdir: an exclusive ``flock`` on ``workdir/.lock``, which
    the operating system releases when the process ends, however it ends (so a crashed run
    leaves nothing stuck). The file says who holds it."""

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / ".lock"
        self._file = None

    def __enter__(self):
        import fcntl
        import socket

        f = open(self.path, "a+")  # noqa: SIM115 (held open while the run lasts)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(
                "workdir",
                f"workdir {self.path.parent} is in use by another run ({holder}); wait for it "
                "to end, or choose another workdir",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.ctime()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc):
        self._file.close()  # closing releases the lock


def write_atomically(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """``write(temporary path)`` then a rename onto ``path``: ``path`` is always whole, the
    old file or the new one, even if the disk fills or the process is killed meanwhile.

    Raises:
      RunFileError: it cannot be written; ``path`` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with shutdown.critical():
            write(tmp)
            os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunFileError(
            f"cannot write {path}: {e.strerror or e}; the previous {path.name}, if any, is "
            "unchanged"
        ) from None


def _check_free_space(workdir: pathlib.Path, state, keep: int) -> None:
    """Refuses to start when the disk cannot hold the checkpoints the run will keep."""
    state_bytes = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state))
    need = (keep + 1) * state_bytes + (16 << 20)  # checkpoints, with metrics and curves
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise RunFileError(
            f"{workdir} has {free / 2**20:,.1f} MiB free; the run needs about "
            f"{need / 2**20:,.1f} MiB for its checkpoints and files. Free some space, or "
            "choose another workdir"
        )


class CompileCounter:
    """Counts JAX's compilations while active, and the seconds spent in them.

    ``count`` is the number of XLA compilations; ``seconds`` the wall time spent tracing to
    a jaxpr, lowering to StableHLO and compiling with XLA, from the spans
    ``jax.monitoring`` reports for each (spans that nest, such as a jitted function traced
    inside another, counted once).

    >>> x = jnp.arange(3)
    >>> with CompileCounter() as compiles:
    ...     _ = jax.jit(lambda x: x + 1)(x)
    >>> compiles.count, compiles.seconds > 0
    (1, True)
    """

    _EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.count = 0
        self._spans: list[tuple[float, float]] = []

    def _listener(self, event: str, start: float, end: float, **_):
        if event in self._EVENTS:
            self._spans.append((start, end))
            self.count += event == self._EVENTS[-1]

    @property
    def seconds(self) -> float:
        total, covered_to = 0.0, -math.inf
        for start, end in sorted(self._spans):
            total += max(0.0, end - max(start, covered_to))
            covered_to = max(covered_to, end)
        return total

    def __enter__(self):
        jax.monitoring.register_event_time_span_listener(self._listener)
        return self

    def __exit__(self, *exc):
        _jax_compat.unregister_event_time_span_listener(self._listener)


def _rates(sums) -> tuple[float, float]:
    loss_sum, correct, count = (float(v) for v in sums)
    return loss_sum / max(count, 1), correct / max(count, 1)


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains, validates each epoch, tests; writes metrics.json, curves.png, checkpoints.

    ``model`` is any Flax module mapping ``[batch, time, features]`` to logits ``[batch,
    num_classes]``; by default the ``Classifier`` that ``config`` describes (``make_model``).
    When resuming, the run's own model is used unless one is given, and ``config`` must
    match the run's settings except those in ``RESUMABLE`` (``resume_config`` reads them).

    Returns the metrics that ``metrics.json`` holds, plus ``"state"``: the final training
    state (parameters and optimizer state), for notebooks and tests.

    Raises:
      ConfigError, data.DataError, CheckpointError, TrainingDiverged: problems a user can
      act on, each with a message that says what to do (``USER_ERRORS``).
    """
    config.validate()
    if config.distributed:
        distributed.initialize()  # on a cluster JAX detects, unless already joined
    workdir = _check_workdir(workdir)
    saved = _check_resume(config, workdir) if config.resume else None
    if not config.resume:
        _refuse_finished_run(workdir)
    mesh = _data_mesh(config)  # JAX's backends start here (a failure: DeviceError)
    if jax.process_index() != 0:  # process 0 reports for all
        print_fn = _silent
    ds, train = _load_data(config)
    input_shape = data_lib.sequence_shape(train.images.shape[1:], config.sequence)
    model = _the_model(config, model, saved, ds.num_classes, input_shape)
    _print_setup(config, ds, train, model, input_shape, print_fn)
    meta = {
        "format": runs.FORMAT,
        "model": _model_spec(model),
        "num_classes": ds.num_classes,
        "image_shape": list(train.images.shape[1:]),
        "input_shape": list(input_shape),
        "config": dataclasses.asdict(config),
    }

    new_paths = _missing(workdir)
    _make_workdir(workdir)
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:  # the one writer of the run's files
            stack.enter_context(WorkdirLock(workdir))
            stack.push(lambda failed, *_: failed and _remove_unless_saved(workdir, new_paths))
        if config.resume:
            _check_resume(config, workdir)  # again, now that the run is ours
        else:
            _refuse_finished_run(workdir)
        checkpointer = Checkpointer(workdir / "checkpoints")
        stack.callback(checkpointer.close)
        state = create_train_state(config, model, input_shape)
        _check_free_space(workdir, state, checkpointer.max_to_keep)
        state, history = _restore(config, checkpointer, mesh, state, print_fn)
        splits = {"train": train, "validation": ds.validation, "test": ds.test}
        held_out = {
            name: eval_batches(splits[name], config, mesh) for name in ("validation", "test")
        }
        progress = _Progress(config.progress and jax.process_index() == 0)
        on_step = progress.update if progress.enabled else None
        epoch_fns = make_epoch_fns(config, model, mesh, len(train), on_step)
        try:
            state = _train(
                config,
                epoch_fns,
                train,
                held_out,
                mesh,
                state,
                history,
                checkpointer,
                progress,
                meta,
                print_fn,
            )
            test_sums = epoch_fns[1](state.params, held_out["test"])
            test_loss, test_acc = _rates(jax.device_get(test_sums))
        except jax.errors.JaxRuntimeError as e:
            if not distributed.is_multiprocess():
                raise
            raise distributed.lost(e, kept_checkpoints(checkpointer.directory)) from None
        metrics = _metrics(config, model, mesh, splits, state, history, test_loss, test_acc)
        if jax.process_index() == 0:
            text = json.dumps(metrics, indent=2) + "\n"
            write_atomically(workdir / "metrics.json", lambda p: p.write_text(text))
            title = f"{describe_model(model)} on {ds.name}: test accuracy {test_acc:.2%}"
            write_atomically(workdir / "curves.png", lambda p: plot_curves(history, p, title))
    print_fn(f"test accuracy: {test_acc:.2%}")
    return {**metrics, "state": state}


def _silent(_: str) -> None:
    pass


def _metrics(config, model, mesh, splits, state, history, test_loss, test_acc) -> dict:
    return {
        "config": dataclasses.asdict(config),
        "model": describe_model(model),
        "devices": [str(d) for d in mesh.devices.flat],
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "data": {name: len(split) for name, split in splits.items()},
        "params": params_lib.count_params(state.params),
        "history": history,
        "compile_seconds": sum(h.get("compile_seconds", 0.0) for h in history),
        "test_loss": test_loss,
        "test_accuracy": test_acc,
    }


def evaluate_params(
    config: Config,
    model: nn.Module,
    params: Any,
    split: str = "test",
    *,
    data_dir: str | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Loss and accuracy of ``model`` with ``params`` on a split (``train``, ``validation``
    or ``test``) of ``config``'s data set, read as ``config.sequence``, data parallel over
    every device: ``{"split", "examples", "loss", "accuracy"}``. ``data_dir`` and
    ``download`` override the config's."""
    splits = ("train", "validation", "test")
    if split not in splits:
        raise ConfigError("split", f"split must be one of {', '.join(splits)}; got {split!r}")
    config = dataclasses.replace(config, data_dir=data_dir or config.data_dir, download=download)
    ds, train = _load_data(config)
    images_labels = {"train": train, "validation": ds.validation, "test": ds.test}[split]
    mesh = Mesh(np.array(devices()), ("data",))
    _, evaluate = make_epoch_fns(config, model, mesh, len(train))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    sums = jax.device_get(evaluate(params, eval_batches(images_labels, config, mesh)))
    loss, accuracy = _rates(sums)
    return {"split": split, "examples": len(images_labels), "loss": loss, "accuracy": accuracy}


def _check_resume(config: Config, workdir: pathlib.Path) -> dict:
    """The meta of the run to resume in ``workdir``, after checking ``config`` against it."""
    _, epoch, meta = runs.read_meta(workdir)
    check_resume(Config(**meta["config"]), config, len(meta["history"][:epoch]))
    return meta


def _the_model(config, model, saved, num_classes, input_shape) -> nn.Module:
    """The module to train: ``model``, the resumed run's, or the ``Classifier`` of
    ``config``; checked to map ``[batch, *input_shape]`` to ``[batch, num_classes]``."""
    if model is None and saved is not None:
        try:
            model = runs.module_from_spec(saved["model"])
        except ValueError as e:
            raise ConfigError("model", f"model: {e}") from None
    elif saved is not None and _model_spec(model) != saved["model"]:
        raise ConfigError(
            "model", "model: this is not the model the run was started with; resume that one"
        )
    if model is None:
        model = make_model(config, num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"model must be a Flax linen Module; got {type(model).__name__}")
    if saved is not None and saved["num_classes"] != num_classes:
        raise ConfigError(
            "dataset",
            f"dataset {config.dataset} has {num_classes} classes; the run's model has "
            f"{saved['num_classes']}",
        )
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    try:
        out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    except Exception as e:  # the module's own error, for inputs of the data set's shape
        raise ConfigError(
            "model",
            f"model: {type(model).__name__} cannot read inputs [batch, {input_shape[0]}, "
            f"{input_shape[1]}]: {type(e).__name__}: {str(e)[:300]}",
        ) from None
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (2, num_classes):
        shape = list(out.shape) if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        raise ConfigError(
            "model",
            f"model must map [batch, time, features] to logits [batch, {num_classes}] (the "
            f"data set's classes); {type(model).__name__} gives {shape}",
        )
    last = model.layers[-1] if isinstance(model, lnn.Sequential) and model.layers else None
    if isinstance(last, lnn.Dense) and last.activation not in (None, "linear"):
        raise ConfigError(
            "model",
            f"model: its last layer, Dense(activation={last.activation!r}), must return logits "
            "(the loss is softmax cross-entropy on logits, as Keras's from_logits=True); use "
            "Dense(..., activation=None)",
        )
    return model


def _model_spec(model: nn.Module) -> dict:
    """``runs.module_spec(model)``, or the reason it cannot be saved (``load_run`` then
    needs the model passed in)."""
    try:
        return runs.module_spec(model)
    except ValueError as e:
        cls = type(model)
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "unsaved": str(e)}


def _refuse_finished_run(workdir: pathlib.Path) -> None:
    """A workdir that holds checkpoints belongs to a run: it is resumed, not overwritten.

    Reads the directory only: in a multi-process run, an orbax manager opened here by some
    processes and not others would leave their collectives out of step."""
    epochs = finished_epochs(workdir / "checkpoints")
    if epochs:
        raise ConfigError(
            "workdir",
            f"workdir {workdir} already holds checkpoints (epoch {epochs[-1]}): resume that "
            "run, or choose another workdir.",
        )


def _data_mesh(config: Config) -> Mesh:
    """A one-axis mesh, ``("data",)``, over every device JAX sees."""
    mesh = Mesh(np.array(devices()), ("data",))
    if config.batch_size % mesh.size:
        raise ConfigError(
            "batch_size",
            f"batch_size {config.batch_size} must be a multiple of the {mesh.size} devices "
            "the batch is split across.",
        )
    return mesh


def _load_data(config: Config) -> tuple[data_lib.Dataset, data_lib.Split]:
    """The data set, and its training split cut to ``max_train_examples``."""
    ds = data_lib.load(
        config.dataset,
        data_dir=config.data_dir,
        validation_split=config.validation_split,
        download=config.download,
    )
    train = ds.train
    if config.max_train_examples is not None:
        n = config.max_train_examples
        train = data_lib.Split(train.images[:n], train.labels[:n])
    if config.batch_size > len(train):
        raise ConfigError(
            "batch_size",
            f"batch_size {config.batch_size} is larger than the {len(train)} training examples",
        )
    return ds, train


def _print_setup(config, ds, train, model, input_shape, print_fn) -> None:
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    print_fn(
        f"devices: {len(devices)} x {', '.join(kinds)} ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)"
    )
    print_fn(
        f"data: {ds.name}: {len(train):,} train, {len(ds.validation):,} validation, "
        f"{len(ds.test):,} test; each image read as {config.sequence}"
    )
    params_lib.summary(model, (None, *input_shape), print_fn=print_fn)


def _restore(config, checkpointer, mesh, state, print_fn):
    """``state`` replicated on the mesh, and the history so far: from the newest checkpoint
    when resuming, else as initialised."""
    replicated = NamedSharding(mesh, P())
    state = jax.tree.map(lambda leaf: _replicated(leaf, replicated), state)
    if not config.resume:
        return state, []
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state
    )
    epoch, state, meta = checkpointer.restore_latest(abstract)
    print_fn(f"resumed from the checkpoint of epoch {epoch} in {checkpointer.directory}")
    return state, list(meta["history"])[:epoch]


def _replicated(leaf, sharding: NamedSharding) -> jax.Array:
    """``leaf``, which this process holds whole, as one array replicated on the mesh; each
    process places its own copy (``jax.device_put`` would first compare the copies across
    processes)."""
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def eval_batches(split: data_lib.Split, config: Config, mesh: Mesh) -> dict[str, jax.Array]:
    """``split``'s batches for ``evaluate``: in the split's order, of ``eval_batch_size``."""
    order = np.arange(len(split), dtype=np.int32)
    return batches_on_mesh(split, order, eval_batch_size(config, mesh), mesh)


def _train(
    config,
    epoch_fns,
    train,
    held_out,
    mesh,
    state,
    history,
    checkpointer,
    progress,
    meta,
    print_fn,
):
    """The epochs after ``history``'s last, to ``config.epochs``: each trained, validated,
    reported, added to ``history`` and checkpointed. Returns the final state."""
    train_epoch, evaluate = epoch_fns
    n_train = len(train)
    steps = -(-n_train // config.batch_size)
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            with CompileCounter() as compiles:
                progress.open(epoch, config.epochs, steps, config.batch_size)
                start = time.perf_counter()
                order = epoch_order(config.seed, epoch, n_train)
                batches = batches_on_mesh(train, order, config.batch_size, mesh)
                state, sums, bad_step = train_epoch(state, batches)
                del batches  # the epoch's examples, freed as soon as it ends
                sums, bad_step = jax.device_get((sums, bad_step))
                train_seconds = time.perf_counter() - start
                progress.close()
                if bad_step >= 0:
                    raise TrainingDiverged(
                        int(bad_step), epoch, kept_checkpoints(checkpointer.directory)
                    )
                val_sums = jax.device_get(evaluate(state.params, held_out["validation"]))
                if not np.isfinite(val_sums).all():
                    raise TrainingDiverged(None, epoch, kept_checkpoints(checkpointer.directory))
                epoch_seconds = time.perf_counter() - start
            record = _epoch_record(epoch, sums, val_sums, n_train, train_seconds, epoch_seconds)
            record.update(
                compilations=compiles.count,
                compile_seconds=compiles.seconds,
                learning_rate=config.learning_rate,  # a resumed run may change it
            )
            history.append(record)
            print_fn(_epoch_line(record, config.epochs))
            with shutdown.critical():
                checkpointer.save(epoch, state, {**meta, "history": history})
    finally:
        progress.close()
    return state


def kept_checkpoints(directory: str | os.PathLike) -> str:
    """The finished checkpoints in ``directory``, in a sentence: e.g. ``The checkpoints of
    epochs 1, 2 are kept.``"""
    epochs = finished_epochs(directory)
    if not epochs:
        return "No checkpoint was saved."
    if len(epochs) == 1:
        return f"The checkpoint of epoch {epochs[0]} is kept."
    return f"The checkpoints of epochs {', '.join(map(str, epochs))} are kept."


def _epoch_record(epoch, sums, val_sums, n_train, train_seconds, epoch_seconds) -> dict:
    (loss, acc), (val_loss, val_acc) = _rates(sums), _rates(val_sums)
    return {
        "epoch": epoch,
        "train_loss": loss,
        "train_accuracy": acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "epoch_seconds": epoch_seconds,
        "train_seconds": train_seconds,
        "samples_per_second": n_train / train_seconds,
    }


def _epoch_line(h: dict, epochs: int) -> str:
    compiling = f", {h['compile_seconds']:.1f} s compiling" if h["compilations"] else ""
    return (
        f"epoch {h['epoch']}/{epochs}: loss {h['train_loss']:.4f}, accuracy "
        f"{h['train_accuracy']:.2%} | val_loss {h['val_loss']:.4f}, val_accuracy "
        f"{h['val_accuracy']:.2%} | {h['epoch_seconds']:.1f} s "
        f"({h['samples_per_second']:,.0f} samples/s{compiling})"
    )


def describe_model(model: nn.Module) -> str:
    """The model in Keras's words, e.g. ``LSTM(50) -> Dense(10)``; other modules by their
    class name."""
    if isinstance(model, lnn.Classifier):
        layers = [lnn.LAYERS[model.cell](u) for u in model.units]
        if model.bidirectional:
            layers = [lnn.Bidirectional(layer) for layer in layers]
        return " -> ".join([*map(describe_model, layers), f"Dense({model.num_classes})"])
    if isinstance(model, lnn.Sequential):
        return " -> ".join(describe_model(layer) for layer in model.layers)
    if isinstance(model, lnn.Bidirectional):
        return f"Bidirectional({describe_model(model.layer)})"
    if isinstance(model, lnn._Recurrent):
        return f"{model.cell.layer}({model.units})"
    if isinstance(model, lnn.Dense | nn.Dense):
        return f"Dense({model.units if isinstance(model, lnn.Dense) else model.features})"
    return type(model).__name__


def plot_curves(
    history: list[dict[str, float]], path: str | os.PathLike, title: str | None = None
) -> None:
    """Loss and accuracy (in percent) per epoch, training against validation, saved as a
    PNG under ``title``.

    Drawn on a ``matplotlib.figure.Figure`` of its own, not through ``pyplot``: pyplot's
    backend, and the figures a notebook shows, are left as they were.
    """
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy (%)")):
        scale = 100 if key == "accuracy" else 1
        ax.plot(epochs, [scale * h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [scale * h[f"val_{key}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        ax.set_title(label)
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
