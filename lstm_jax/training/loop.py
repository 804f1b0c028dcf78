"""The training loop: ``train_and_evaluate``, a run from its settings to its test accuracy,
with each epoch trained, validated, reported and checkpointed (``_Epochs``)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

if TYPE_CHECKING:
    from flax import nnx as flax_nnx

from lstm_jax import _version
from lstm_jax import data as data_lib
from lstm_jax import params as params_lib
from lstm_jax._process import distributed, shutdown
from lstm_jax.errors import ConfigError, TrainingDiverged
from lstm_jax.params import is_nnx_module
from lstm_jax.training import (
    early_stopping,
    model_checks,
    optim,
    reporting,
    rundir,
    runs,
    sharding,
    steps,
    tasks,
)
from lstm_jax.training.checkpoints import Checkpointer
from lstm_jax.training.config import (
    MODEL_SETTINGS,
    Config,
    check_model_settings,
    settings,
    text_task,
)


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    *,
    model: nn.Module | flax_nnx.Module | None = None,
    data: data_lib.Dataset | None = None,
    variables: dict | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains, validates each epoch, tests; writes metrics.json, curves.png, checkpoints.

    ``data`` is your own data (``data.from_arrays``) in place of ``config.dataset``; a run
    trained on it records its shapes, not the data, and is resumed or evaluated with the
    same ``data`` given again. ``variables`` (``{"params": ..., **collections}``, e.g. what
    ``from_keras`` returns) are the weights a new run starts from instead of ``config.seed``'s.

    ``model`` is any Flax linen module mapping ``[batch, time, features]`` to logits
    ``[batch, num_classes]``, or an ``lstm_jax.nnx`` model (which trains from the weights it
    holds, as its linen twin, and holds the trained weights afterwards); by default the
    ``Classifier`` that ``config`` describes (``make_model``). A model given is trained as
    it is: ``config``'s ``MODEL_SETTINGS`` (cell, units, ...) must then stay at their
    defaults, and metrics.json records them as null.
    When resuming, the run's own model is used unless one is given, and ``config`` must
    match the run's settings except those in ``RESUMABLE`` (``resume_config`` reads them).

    Returns the metrics that ``metrics.json`` holds, plus ``"state"``: the final training
    state (parameters and optimizer state); for an NNX model, ``"nnx_model"``: that model,
    now holding the trained weights, in evaluation mode (``.eval()``; ``.train()`` to go on
    training it in a loop of your own).

    Raises:
      ConfigError, data.DataError, CheckpointError, TrainingDiverged, DeviceError,
      RunFileError: problems a user can act on, each with a message that says what to do
      (``USER_ERRORS``).
    """
    run = _prepare(config, workdir, model, data, variables, print_fn)
    state, metrics = _train(run, variables)
    run.print_fn(reporting.test_line(metrics, run.task))
    return _result(metrics, state, run.nnx_model)


@dataclasses.dataclass(kw_only=True)
class _Run:
    """A run checked and set up, before its directory is touched (``_prepare``)."""

    config: Config
    path: pathlib.Path
    saved: dict | None  # the meta of the run resumed, or None for a new run
    mesh: Mesh
    writer: bool  # process 0: reports and writes the run's files
    print_fn: Callable[[str], None]
    ds: data_lib.Dataset
    train: data_lib.Split  # ds.train, cut to max_train_examples
    input_shape: tuple[int, int]
    model: nn.Module
    nnx_model: Any
    unused: tuple[str, ...]  # settings the model does not use, recorded as null
    calls: Any  # steps.model_calls'
    examples: int  # of ``train``, trained each epoch
    task: tasks.Task
    streams: bool  # a text read as contiguous streams, the model's state carried


def _prepare(config, workdir, model, data, variables, print_fn) -> _Run:
    """Everything checked that can be before the run's directory is made: the settings,
    the run to resume, the data, the model and how it is called; the setup printed."""
    config = _with_task(config, data)
    config.validate()
    if config.distributed:
        distributed.initialize()  # on a cluster JAX detects, unless already joined
    path = rundir.check(workdir)
    saved = _check_run_in(path, config)
    _check_data_and_variables(path, saved, data, variables)
    mesh = sharding.data_mesh(config.batch_size)  # JAX's backends start here (DeviceError)
    writer = jax.process_index() == 0
    print_fn = print_fn if writer else reporting.silent
    ds, train = steps.load_data(config, data)
    task = tasks.TASKS[config.task]
    input_shape = data_lib.sequence_shape(train.images.shape[1:], config.sequence)
    model, nnx_model = _linen(model)
    model = _the_model(config, model, saved, ds)
    unused = _unused_settings(config, model, ds, new=saved is None)
    calls = model_checks.check_model(
        model,
        input_shape,
        ds.num_classes,
        masked=train.lengths is not None,
        test_shape=data_lib.sequence_shape(ds.test.images.shape[1:], config.sequence),
        task=task,
        targets_shape=train.labels.shape[1:],
    )
    streams = _streams(config, ds, calls)
    examples = steps.examples_per_epoch(len(train), config.batch_size, calls)
    if distributed.is_multiprocess():  # all alike, or all stop
        distributed.agree(_statement(config, model, ds, train))
    reporting.print_setup(config, ds, train, model, input_shape, print_fn, examples=examples)
    return _Run(
        config=config,
        path=path,
        saved=saved,
        mesh=mesh,
        writer=writer,
        print_fn=print_fn,
        ds=ds,
        train=train,
        input_shape=input_shape,
        model=model,
        nnx_model=nnx_model,
        unused=unused,
        calls=calls,
        examples=examples,
        task=task,
        streams=streams,
    )


def _with_task(config: Config, data) -> Config:
    """``config`` with its task said: the one given, which must be the data's, or the data's
    (``data``'s own; a text's ``next_token``; else ``classify``)."""
    if data is not None:
        config = dataclasses.replace(config, dataset=data.name)
        if config.task is not None and config.task != data.task:
            raise ConfigError(
                "task",
                f"task {config.task}: the data was made for task {data.task} (its targets are "
                f"{data.train.labels.dtype} {list(data.train.labels.shape[1:]) or 'one'} per "
                "example); give that task, or make the data for this one "
                "(data.from_arrays(..., task=...))",
            )
        config = dataclasses.replace(config, task=data.task)
        if data.vocabulary is not None:  # a text's windows are the data's own
            window = int(data.train.images.shape[1])
            if config.bptt not in (window, Config().bptt):
                raise ConfigError(
                    "bptt",
                    f"bptt {config.bptt}: the text was cut into windows of {window} "
                    f"(data.from_text(..., bptt={window})); give that, or cut it again",
                )
            config = dataclasses.replace(config, bptt=window)
        return config
    if config.task is None:
        task = "next_token" if text_task(config.dataset) else "classify"
        return dataclasses.replace(config, task=task)
    return config


def _streams(config: Config, ds: data_lib.Dataset, calls) -> bool:
    """Whether the run reads its text as contiguous streams, carrying the model's state
    (``windows`` streams, a text, and a model that carries its state)."""
    if ds.vocabulary is None or config.windows != "streams":
        return False
    if not calls.carries_state:
        raise ConfigError(
            "windows",
            "windows streams carries the model's state from one window of the text to the "
            "next, which needs a model whose __call__ takes initial_state= and return_state= "
            "(lstm_jax.linen.LanguageModel); give such a model, or windows random",
        )
    return True


def _train(run: _Run, variables) -> tuple[Any, dict]:
    """The run in its directory, locked for it: trained, checkpointed each epoch, tested;
    ``(final state, metrics)``. What a run that fails before its first checkpoint made in
    the directory is removed again."""
    config, path = run.config, run.path
    meta = rundir.new_meta(run.model, run.ds, run.train.images.shape[1:], run.input_shape, config)
    new_paths = rundir.missing(path)
    rundir.make(path)
    with contextlib.ExitStack() as stack:
        if run.writer:
            stack.enter_context(rundir.WorkdirLock(path))
        else:  # the lock file is process 0's
            new_paths = [p for p in new_paths if p.name != rundir.LOCK]
        stack.push(lambda failed, *_: failed and rundir.remove_unless_saved(path, new_paths))
        distributed.check_one_workdir(path)
        _check_run_in(path, config)  # again, now that the run is ours
        checkpointer = Checkpointer(path / rundir.CHECKPOINTS)
        stack.callback(checkpointer.close)
        epochs = _Epochs.build(run, checkpointer=checkpointer, meta=meta)
        state = _initial_state(run, variables, epochs.steps_per_epoch)
        if run.saved is None:
            initial = {"params": state.params, **getattr(state, "model_state", {})}
            model_checks.check_outputs(
                run.model, run.calls, initial, run.train, config.sequence, run.task
            )
        rundir.check_free_space(path, state, checkpointer.max_to_keep)
        state, history = _restore(config, checkpointer, run.mesh, state, run.print_fn)
        if run.writer and config.tensorboard:
            epochs.scalars = stack.enter_context(reporting.Scalars(path / rundir.TENSORBOARD))
        state, test = epochs.run(state, history)
        return state, _finish(run, epochs, history, state=state, test=test)


def _result(metrics: dict, state, nnx_model) -> dict:
    """What ``train_and_evaluate`` returns; an NNX model is given the trained weights and
    left in evaluation mode (dropout off), ready to predict."""
    if nnx_model is None:
        return {**metrics, "state": state}
    from lstm_jax import nnx as lnnx

    # NNX's way: the model holds the trained weights.
    lnnx.load_linen_variables(nnx_model, {"params": jax.device_get(state.params)})
    nnx_model.eval()
    return {**metrics, "state": state, "nnx_model": nnx_model}


def _finish(run: _Run, epochs: _Epochs, history, *, state, test) -> dict:
    """The run's metrics (``test``: the test set's loss and accuracy; the settings the model
    does not use as null; the examples trained each epoch, if not all), written with its
    curves by process 0."""
    config, train, ds, model = run.config, run.train, run.ds, run.model
    metrics = reporting.metrics(
        config,
        model,
        history,
        mesh=run.mesh,
        splits={"train": train, "validation": ds.validation, "test": ds.test},
        params=state.params,
        test=test,
    )
    if ds.vocabulary is not None:
        metrics["vocabulary"] = ds.vocabulary
    metrics["config"].update(dict.fromkeys(run.unused))
    if epochs.examples < len(train):
        metrics["train_examples_per_epoch"] = epochs.examples
    metrics.update(early_stopping.summary(config, history))
    if run.writer:
        title = (
            f"{params_lib.describe(model)} on {ds.name}: {reporting.test_line(metrics, run.task)}"
        )
        plot = functools.partial(
            reporting.plot_curves, metrics["history"], title=title, metric=run.task.metric
        )
        rundir.write_run_files(run.path, metrics, plot)
    return metrics


def _linen(model) -> tuple[nn.Module | None, Any]:
    """``(the linen module to train, the NNX model it stands for or None)``: an
    ``lstm_jax.nnx`` model trains as its linen twin (``lstm_jax.nnx.to_linen``)."""
    if not is_nnx_module(model):
        return model, None
    from lstm_jax import nnx as lnnx

    try:
        return lnnx.to_linen(model), model
    except ValueError as e:
        raise ConfigError("model", f"model: {e}") from e


def _initial_state(run: _Run, variables, per_epoch: int):
    """The train state before the first epoch: variables from ``config.seed``, or the
    ``variables`` given, or those the NNX model holds; ``per_epoch``: steps (schedules)."""
    if run.nnx_model is not None:
        from lstm_jax import nnx as lnnx

        variables = lnnx.to_linen_variables(run.nnx_model)
    return steps.create_train_state(
        run.config, run.model, run.input_shape, variables=variables, steps_per_epoch=per_epoch
    )


def _check_data_and_variables(path: pathlib.Path, saved: dict | None, data, variables) -> None:
    """Refuses ``variables`` for a resumed run, and a resumed run of your own arrays
    without them (``data``)."""
    if saved is not None and variables is not None:
        raise ConfigError(
            "variables",
            "variables= starts a new run from given weights; a resumed run continues from "
            "its own checkpoint (give a new workdir)",
        )
    source = (saved or {}).get("data", {})
    if saved is not None and source.get("from_arrays") and data is None:
        raise ConfigError(
            "data",
            f"the run in {path} trained on your own arrays ({source.get('name')}, train "
            f"{source.get('train')}), which a run does not keep: resume it with them, "
            "train_and_evaluate(config, workdir, data=data.from_arrays(...))",
        )


def _check_run_in(path: pathlib.Path, config: Config) -> dict | None:
    """The meta of the run to resume in ``path``, checked against ``config``; for a new run,
    None, and ``path`` must hold no run's checkpoints."""
    if config.resume:
        return runs.check_against_run(config, path)
    rundir.refuse_finished_run(path)
    return None


def _statement(config: Config, model: nn.Module, ds, train: data_lib.Split) -> dict:
    """What makes the run, as each of its processes states it (``distributed.agree``): the
    settings, the model, the data's shapes and fingerprint, and the versions."""
    return {
        **{k: getattr(config, k) for k in settings(agreed=True)},
        "model": f"{params_lib.describe(model)} {_digest(rundir.model_spec_or_reason(model))}",
        "data": f"{ds.name} {list(train.images.shape)} "
        + data_lib.fingerprint(train, ds.validation, ds.test),
        "lstm_jax": _version.__version__,
        "jax": jax.__version__,
    }


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass(kw_only=True)
class _Epochs:
    """What the epochs of one run share: ``run(state, history)`` trains the epochs after
    ``history``'s last, to ``config.epochs``, each trained, validated, reported, added to
    ``history`` and checkpointed, then tests the final state."""

    config: Config
    train_epoch: Callable  # steps.make_train_epoch's
    evaluator: steps.Evaluator
    steps_per_epoch: int
    train: data_lib.Split
    examples: int  # of ``train``, trained each epoch (``steps.examples_per_epoch``)
    held_out: dict[str, data_lib.Split]  # validation and test
    mesh: Mesh
    checkpointer: Checkpointer
    progress: reporting.Progress
    meta: dict
    print_fn: Callable[[str], None]
    task: tasks.Task
    streams: bool  # the training text read as streams: the same batches every epoch
    scalars: reporting.Scalars | None = None  # --tensorboard's writer, on process 0

    @classmethod
    def build(cls, run: _Run, *, checkpointer, meta) -> _Epochs:
        """The epochs of ``run``; the ``writer`` process (0) alone shows a progress bar."""
        config, mesh, examples, calls = run.config, run.mesh, run.examples, run.calls
        progress = reporting.Progress(config.progress and run.writer)
        on_step = progress.update if progress.enabled else None
        how = {"task": run.task, "streams": run.streams}
        return cls(
            config=config,
            train_epoch=steps.make_train_epoch(
                config, run.model, mesh, examples, on_step, calls, **how
            ),
            evaluator=steps.Evaluator(config, run.model, mesh, calls, **how),
            steps_per_epoch=-(-examples // config.batch_size),
            train=run.train,
            examples=examples,
            held_out={"validation": run.ds.validation, "test": run.ds.test},
            mesh=mesh,
            checkpointer=checkpointer,
            progress=progress,
            meta=meta,
            print_fn=run.print_fn,
            **how,
        )

    def run(self, state, history: list[dict]):
        """``(final state, the task's numbers on the test set)``."""
        try:
            with contextlib.ExitStack() as stack:
                stack.callback(self.progress.close)
                if history:  # resumed: say so when there is nothing left to train
                    self.say_if_done(history)
                for epoch in range(len(history) + 1, self.config.epochs + 1):
                    if early_stopping.stopped(self.config, history):
                        break
                    state, record = self.epoch(state, epoch)
                    history.append(record)
                    state = early_stopping.track(self.config, state, history)
                    line = reporting.epoch_line(record, self.config.epochs, self.task.metric)
                    self.print_fn(line)
                    if early_stopping.stopped(self.config, history):
                        self.print_fn(early_stopping.line(self.config, history))
                    if self.scalars is not None:
                        self.scalars.write(record)
                    with shutdown.critical():
                        saved = optim.to_saved(state)
                        self.checkpointer.save(epoch, saved, {**self.meta, "history": history})
            state = early_stopping.best_state(self.config, state)
            test_sums = self.evaluate(state, "test")
            return state, self.task.rates(jax.device_get(test_sums))
        except jax.errors.JaxRuntimeError as e:
            if not distributed.is_multiprocess():
                raise
            raise distributed.lost(e, self.kept()) from e

    def say_if_done(self, history: list[dict]) -> None:
        """A line for a resumed run that trains no epoch: all done, or stopped early."""
        done, epochs = len(history), self.config.epochs
        if early_stopping.stopped(self.config, history) and done < epochs:
            line = early_stopping.line(self.config, history)
            self.print_fn(f"{line}. The run stopped after epoch {done}: nothing more to train")
        elif done >= epochs:
            self.print_fn(f"the run has finished its {epochs} epochs: nothing more to train")

    def epoch(self, state, epoch: int) -> tuple[Any, dict]:
        """Trains and validates ``epoch``: the new state, and the epoch's record."""
        train_epoch = self.train_epoch
        config, n_train = self.config, self.examples
        with reporting.CompileCounter() as compiles:
            self.progress.open(
                epoch, config.epochs, -(-n_train // config.batch_size), config.batch_size
            )
            first_rate = self.learning_rate(state, int(state.step))  # before it is donated
            start = time.perf_counter()
            batches = self.batches(epoch)
            state, sums, bad_step = train_epoch(state, batches)
            del batches  # the epoch's examples, freed as soon as it ends
            sums, bad_step = jax.device_get((sums, bad_step))
            train_seconds = time.perf_counter() - start
            self.progress.close()
            if bad_step >= 0:
                raise TrainingDiverged(int(bad_step), epoch, self.kept())
            val_sums = jax.device_get(self.evaluate(state, "validation"))
            if not np.isfinite(val_sums).all():
                raise TrainingDiverged(None, epoch, self.kept())
            epoch_seconds = time.perf_counter() - start
        record = reporting.epoch_record(
            epoch, sums, val_sums, n_train, train_seconds, epoch_seconds, self.task
        )
        record.update(
            compilations=compiles.count,
            compile_seconds=compiles.seconds,
            # The rates of the epoch's first and last steps: a schedule's jump shows.
            learning_rate_first_step=first_rate,
            learning_rate=self.learning_rate(state, int(state.step) - 1),
        )
        return state, record

    def batches(self, epoch: int) -> dict:
        """The training batches of ``epoch``, on the mesh: the examples in the epoch's own
        order, or a text's contiguous streams (``sharding.stream_batches``)."""
        config = self.config
        if self.streams:
            return sharding.stream_batches(self.train, config.batch_size, self.mesh)
        order = sharding.epoch_order(config.seed, epoch, len(self.train))[: self.examples]
        return sharding.batches_on_mesh(self.train, order, config.batch_size, self.mesh)

    def learning_rate(self, state, step: int) -> float:
        """The rate of ``step`` (a schedule's), with ``state``'s optimizer state (a plateau's)."""
        return optim.current_learning_rate(self.config, state.opt_state, step, self.steps_per_epoch)

    def evaluate(self, state, split: str):
        """The sums of ``state``'s model (and its collections) over a held-out split."""
        model_state = getattr(state, "model_state", None)
        return self.evaluator.sums(split, self.held_out[split], state.params, model_state)

    def kept(self) -> str:
        return rundir.describe_kept(self.checkpointer.directory)


def _restore(config, checkpointer, mesh, state, print_fn):
    """``state`` replicated on the mesh, and the history so far: from the newest checkpoint
    when resuming, else as initialised."""
    state = sharding.place_replicated(state, mesh)
    if not config.resume:
        return state, []
    replicated = sharding.replicated(mesh)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state
    )
    epoch, state, meta = checkpointer.restore_latest(optim.saved_shapes(abstract))
    state = optim.from_saved(state)
    print_fn(f"resumed from the checkpoint of epoch {epoch} in {checkpointer.directory}")
    return state, list(meta["history"])[:epoch]


def _make_model(config: Config, ds: data_lib.Dataset) -> nn.Module:
    """The model ``config`` describes for ``ds``'s task and targets: for values, one per
    sequence, one per step (targets ``[N, T]``), or ``K`` per sequence (``[N, K]``, K not T)."""
    labels, outputs = ds.train.labels, ds.num_classes
    per_step = labels.ndim >= 2
    if (
        config.task == "regress"
        and labels.ndim == 2
        and labels.shape[1] != ds.train.images.shape[1]
    ):
        per_step, outputs = False, int(labels.shape[1])
    return steps.make_model(config, outputs, task=config.task, per_step=per_step)


def _unused_settings(config: Config, model: nn.Module, ds: data_lib.Dataset, *, new: bool):
    """The settings of ``config`` that ``model`` does not use: none when it is the model
    they describe; else ``MODEL_SETTINGS``, which a new run must leave at their defaults
    (``check_model_settings``); a ``Classifier``'s leave ``embed`` unused."""
    if model == _make_model(config, ds):
        return () if config.task == "next_token" else ("embed",)
    if new:
        check_model_settings(config)
    return MODEL_SETTINGS


def _the_model(config: Config, model: nn.Module | None, saved: dict | None, ds):
    """The module to train: ``model``, the resumed run's (``saved`` is its meta), or the
    model of ``config`` for ``ds``."""
    num_classes = ds.num_classes
    if model is None and saved is not None:
        try:
            model = rundir.module_from_spec(saved["model"])
        except ValueError as e:
            raise ConfigError("model", f"model: {e}") from e
    elif saved is not None and rundir.model_spec_or_reason(model) != saved["model"]:
        raise ConfigError(
            "model", "model: this is not the model the run was started with; resume that one"
        )
    if model is None:
        model = _make_model(config, ds)
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"model must be a Flax linen Module; got {type(model).__name__}")
    if saved is not None and saved["num_classes"] != num_classes:
        raise ConfigError(
            "dataset",
            f"dataset {config.dataset} has {num_classes} classes; the run's model has "
            f"{saved['num_classes']}",
        )
    return model
