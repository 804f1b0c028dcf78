"""What a run shows and records: the progress bar, compile counting, each epoch's record
and line, the model in Keras's words, the setup lines, ``metrics.json``'s contents and the
learning curves.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import jax
import jax.numpy as jnp

from lstm_jax import _jax_compat
from lstm_jax import params as params_lib
from lstm_jax._process import console
from lstm_jax.errors import ConfigError
from lstm_jax.training import tasks


class Progress:
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


class CompileCounter:
    """Counts JAX's compilations while active, and the seconds spent in them.

    ``count`` is the number of XLA compilations; ``seconds`` the wall time spent tracing to
    a jaxpr, lowering to StableHLO and compiling with XLA, from the spans
    ``jax.monitoring`` reports for each (spans that nest, such as a jitted function traced
    inside another, counted once).

    >>> import jax.numpy as jnp
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


def epoch_record(
    epoch, sums, val_sums, n_train, train_seconds, epoch_seconds, task=tasks.TASKS["classify"]
) -> dict:
    """One epoch's numbers: the ``task``'s (``tasks.Task.rates``) on the training and
    validation splits, as ``train_*`` and ``val_*``, and its times."""
    train, val = task.rates(sums), task.rates(val_sums)
    record = {"epoch": epoch}
    record.update({f"train_{k}": v for k, v in train.items()})
    record.update({f"val_{k}": v for k, v in val.items()})
    record.update(
        epoch_seconds=epoch_seconds,
        train_seconds=train_seconds,
        samples_per_second=n_train / train_seconds,
    )
    if task.per_step and sums[2]:  # tokens (steps) a second, as language models report
        record["steps_per_second"] = float(sums[2]) / train_seconds
    return record


def _numbers(h: dict, prefix: str, metric: str) -> str:
    """``loss 1.2345, accuracy 45.67%`` (or ``mae``, ``bits``, ``perplexity``) of ``h``'s
    ``prefix`` numbers."""
    name = "loss" if prefix == "train_" else f"{prefix}loss"
    parts = [f"{name} {h[prefix + 'loss']:.4f}"]
    if prefix + "bits" in h:
        parts.append(f"{h[prefix + 'bits']:.3f} bits, perplexity {h[prefix + 'perplexity']:.2f}")
    label = metric if prefix == "train_" else f"{prefix}{metric}"
    value = h[prefix + metric]
    parts.append(f"{label} {value:.2%}" if metric == "accuracy" else f"{label} {value:.4g}")
    return ", ".join(parts)


def epoch_line(h: dict, epochs: int, metric: str = "accuracy") -> str:
    compiling = f", {h['compile_seconds']:.1f} s compiling" if h["compilations"] else ""
    rate = f"{h['samples_per_second']:,.0f} samples/s"
    if "steps_per_second" in h:
        unit = "tokens" if "train_bits" in h else "steps"
        rate = f"{h['steps_per_second']:,.0f} {unit}/s"
    return (
        f"epoch {h['epoch']}/{epochs}: {_numbers(h, 'train_', metric)} | "
        f"{_numbers(h, 'val_', metric)} | {h['epoch_seconds']:.1f} s ({rate}{compiling})"
    )


def test_line(metrics: dict, task: tasks.Task) -> str:
    """``test accuracy: 97.12%``, or the task's numbers on the test set."""
    if task.name == "classify":
        return f"test accuracy: {metrics['test_accuracy']:.2%}"
    return "test: " + _numbers(metrics, "test_", task.metric)


def print_setup(config, ds, train, model, input_shape, print_fn, *, examples: int) -> None:
    """The run's devices, data and model; ``examples``: of ``train``, those each epoch trains
    (``steps.examples_per_epoch``)."""
    every = jax.devices()
    kinds = sorted({d.device_kind for d in every})
    print_fn(
        f"devices: {len(every)} x {', '.join(kinds)} ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)"
    )
    read = f"each image read as {config.sequence}"
    if train.images.ndim == 3:
        _, steps, features = train.images.shape
        lengths = "" if train.lengths is None else ", each to its length (masked)"
        read = f"sequences of {steps} steps x {features} features{lengths}"
    elif train.images.ndim == 2:
        read = f"sequences of {train.images.shape[1]} token ids"
        if ds.vocabulary is not None:
            how = (
                f"{config.batch_size} contiguous streams, the state carried"
                if config.windows == "streams"
                else "in random order, each from a zero state"
            )
            read = (
                f"windows of {train.images.shape[1]} characters ({len(ds.vocabulary)} in the "
                f"vocabulary), read as {how}"
            )
    if config.task not in (None, "classify"):
        read += f"; task {config.task}"
    print_fn(
        f"data: {ds.name}: {len(train):,} train, {len(ds.validation):,} validation, "
        f"{len(ds.test):,} test; {read}"
    )
    if examples < len(train):
        print_fn(
            f"each epoch trains {examples:,} of the {len(train):,} examples, in whole batches "
            f"of {config.batch_size}: the model keeps batch statistics, which a padded last "
            "batch would skew (those left out differ each epoch)"
        )
    dtype = jnp.int32 if len(input_shape) == 1 else jnp.float32  # token ids, or features
    params_lib.summary(model, (None, *input_shape), dtype=dtype, print_fn=print_fn)


def metrics(config, model, history, *, mesh, splits, params, test) -> dict:
    """What ``metrics.json`` holds; ``test`` is the task's numbers on the test set
    (``tasks.Task.rates``), ``splits`` the data's splits by name."""
    return {
        "config": dataclasses.asdict(config),
        "model": params_lib.describe(model),
        "devices": [str(d) for d in mesh.devices.flat],
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "data": {name: len(split) for name, split in splits.items()},
        "params": params_lib.count_params(params),
        "history": history,
        "compile_seconds": sum(h.get("compile_seconds", 0.0) for h in history),
        **{f"test_{k}": v for k, v in test.items()},
    }


def silent(_: str) -> None:
    pass


class Scalars:
    """``--tensorboard``: each epoch's loss, accuracy, learning rate and time as TensorBoard
    scalars (``flax.metrics.tensorboard``, as the flax examples write them) in ``directory``,
    for ``tensorboard --logdir``. A context manager; one writer, on process 0."""

    TAGS = (
        ("train_loss", "loss/train"),
        ("val_loss", "loss/validation"),
        ("train_accuracy", "accuracy/train"),
        ("val_accuracy", "accuracy/validation"),
        ("train_mae", "mae/train"),
        ("val_mae", "mae/validation"),
        ("train_bits", "bits/train"),
        ("val_bits", "bits/validation"),
        ("train_perplexity", "perplexity/train"),
        ("val_perplexity", "perplexity/validation"),
        ("learning_rate", "learning_rate"),
        ("learning_rate_first_step", "learning_rate/first_step"),
        ("epoch_seconds", "epoch_seconds"),
    )

    def __init__(self, directory: str | os.PathLike):
        self.directory = directory

    def __enter__(self) -> Scalars:
        try:
            with console.native_log_held():  # TensorFlow's start-up lines
                from flax.metrics import tensorboard
        except ImportError as e:
            raise ConfigError(
                "tensorboard",
                f"tensorboard: its writer needs TensorFlow and TensorBoard ({e}); pip install "
                "tensorflow tensorboard, or train without it",
            ) from e
        self._writer = tensorboard.SummaryWriter(str(self.directory))
        return self

    def write(self, record: dict) -> None:
        for key, tag in self.TAGS:
            if key in record:  # each task's own numbers
                self._writer.scalar(tag, record[key], record["epoch"])
        self._writer.flush()

    def __exit__(self, *exc) -> None:
        self._writer.close()


def plot_curves(
    history: list[dict[str, float]],
    path: str | os.PathLike,
    title: str | None = None,
    metric: str = "accuracy",
) -> None:
    """Loss and the task's ``metric`` (accuracy in percent, or ``mae``) per epoch, training
    against validation, saved as a PNG under ``title``.

    Drawn on a ``matplotlib.figure.Figure`` of its own, not through ``pyplot``: pyplot's
    backend, and the figures a notebook shows, are left as they were.
    """
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    label = "accuracy (%)" if metric == "accuracy" else metric
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, metric, label)):
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
