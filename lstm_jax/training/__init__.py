"""The trainer: ``train_and_evaluate(config, workdir)`` trains, validates each epoch, tests,
and writes a run directory that ``load_run`` reads back.

By default it runs the lesson: LSTM(50) then Dense(10) on MNIST read row by row, softmax
cross-entropy, Adam at 1e-3, batch 128, 3 epochs, the last 20% of the training set held out
for validation, then the test set. Other tasks (``tasks``: a label per step, the next token of
a text, values) train through the same loop.

Where each part lives:

* ``config``: ``Config``, the run's settings, and what each one is (``settings``);
* ``tasks``: what a run learns: its targets, loss and metric;
* ``steps``: the jitted train step and whole-epoch programs, and the one evaluation;
* ``calls``: how a module is called (its ``train``/``deterministic``/``mask`` arguments);
* ``optim``: the optimizer and learning-rate schedules (optax);
* ``sharding``: the device mesh, and each epoch's batches placed on it;
* ``early_stopping``, ``reporting`` (progress, setup and epoch lines, metrics, curves,
  TensorBoard), ``model_checks`` (a user's model checked before training);
* ``checkpoints`` (orbax), ``rundir`` (the run directory: what it holds, in one format,
  its lock, its files written atomically), ``runs`` (resuming a run, ``load_run``),
  ``export`` (a run as a ``jax.export`` artifact, to serve with jax alone);
* ``loop``: ``train_and_evaluate``.

Several processes (``Config.distributed``) train the same model as one process with as many
devices: process 0 writes the run's files and prints; all write the checkpoints together.
"""

import importlib

from lstm_jax.errors import (
    USER_ERRORS,
    CheckpointError,
    ConfigError,
    DeviceError,
    RunFileError,
    TrainingDiverged,
)
from lstm_jax.params import describe as describe_model
from lstm_jax.training.config import (
    CELLS,
    KINDS,
    LR_SCHEDULES,
    MODEL_SETTINGS,
    OPTIMIZERS,
    PRECISIONS,
    RESUMABLE,
    TASK_DEFAULTS,
    WINDOWS,
    Config,
    check_model_settings,
    check_resume,
    settings,
    text_task,
)

__all__ = [
    "CELLS",
    "KINDS",
    "LR_SCHEDULES",
    "MODEL_SETTINGS",
    "OPTIMIZERS",
    "PRECISIONS",
    "RESUMABLE",
    "TASKS",
    "TASK_DEFAULTS",
    "USER_ERRORS",
    "WINDOWS",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DeviceError",
    "Run",
    "RunFileError",
    "TrainingDiverged",
    "check_model_settings",
    "check_resume",
    "describe_model",
    "devices",
    "evaluate_params",
    "load_run",
    "make_epoch_fns",
    "make_model",
    "resume_config",
    "settings",
    "test_line",
    "text_task",
    "train_and_evaluate",
    "train_step",
]

# The heavier parts (the loop, orbax's checkpoints, the jitted steps) load when first used,
# so that importing one of this package's modules (``steps``, ``config``) loads only it.
_LAZY = {
    "train_and_evaluate": ("lstm_jax.training.loop", "train_and_evaluate"),
    "Run": ("lstm_jax.training.runs", "Run"),
    "load_run": ("lstm_jax.training.runs", "load_run"),
    "resume_config": ("lstm_jax.training.runs", "resume_config"),
    "devices": ("lstm_jax.training.sharding", "devices"),
    "evaluate_params": ("lstm_jax.training.steps", "evaluate_params"),
    "make_epoch_fns": ("lstm_jax.training.steps", "make_epoch_fns"),
    "make_model": ("lstm_jax.training.steps", "make_model"),
    "train_step": ("lstm_jax.training.steps", "train_step"),
    "TASKS": ("lstm_jax.training.tasks", "TASKS"),
    "test_line": ("lstm_jax.training.reporting", "test_line"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'lstm_jax.training' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
