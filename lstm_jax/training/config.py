"""A run's settings: ``Config``, the choices each setting has, and which may change when a
run is resumed. The defaults are the lesson's recipe: LSTM(50) then Dense(10) on MNIST read
row by row, Adam at 1e-3, batch 128, 3 epochs, the last 20% of the training set held out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from lstm_jax import data as data_lib
from lstm_jax.errors import ConfigError
from lstm_jax.recurrent import CELLS

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")


PRECISIONS = ("float32", "bfloat16")

LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "reduce_on_plateau")

# How a language model's training reads its text: contiguous streams, the state carried from
# each window to the next; or windows in random order, each from a zero state.
WINDOWS = ("streams", "random")


KINDS = ("model", "optimizer", "data", "run")


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value) -> bool:
    """A number that is not a bool; NaN fails every range check that follows."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting's value must be: ``ok(value)``, and ``allowed``, saying so."""

    ok: Callable[[Any], bool]
    allowed: str


def _one_of(options) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in options, "one of " + ", ".join(options))


def _count(what: str = "a positive int", *, optional: bool = False) -> Rule:
    return Rule(lambda v: (optional and v is None) or (_is_int(v) and v > 0), what)


_FLAG = Rule(lambda v: isinstance(v, bool), "True or False")
_RATE = Rule(lambda v: _is_real(v) and 0 <= v < 1, "at least 0 and below 1 (Keras's rates)")
_UNITS = Rule(
    lambda v: isinstance(v, tuple) and len(v) > 0 and all(_is_int(u) and u > 0 for u in v),
    "positive ints (e.g. 50 or 128,64)",
)
_LEARNING_RATE = Rule(
    lambda v: _is_real(v) and 0 < v <= np.finfo(np.float32).max,
    "positive and finite in float32 (at most 3.4e38)",
)
_SEED = Rule(lambda v: _is_int(v) and 0 <= v < 2**32, "an int from 0 to 2**32 - 1")
_CLIPNORM = Rule(
    lambda v: v is None or (_is_real(v) and 0 < v < np.inf), "a positive, finite number or None"
)
_DATASET = Rule(lambda v: isinstance(v, str) and v != "", "a name or a path")
_SPLIT = Rule(lambda v: _is_real(v) and 0 < v < 1, "strictly between 0 and 1")
_PATH = Rule(lambda v: v is None or isinstance(v, str), "a path or None")
_TASK = Rule(
    lambda v: v is None or v in data_lib.TASKS,
    "one of " + ", ".join(data_lib.TASKS) + ", or None (the data's own)",
)


def _setting(default, kind: str, rule: Rule, *, resumable=False, agreed=True, evaluate=False):
    """A ``Config`` field and what it is (see ``Config``)."""
    assert kind in KINDS, kind
    meta = {
        "kind": kind,
        "rule": rule,
        "resumable": resumable,
        "agreed": agreed,
        "evaluate": evaluate,
    }
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a run depends on; the defaults are the lesson's recipe.

    Each field's metadata says what it is (``kind``: ``model``, ``data``, ``optimizer`` or
    ``run``), what its value must be (``rule``, which ``validate`` applies), whether a resumed
    run may change it (``resumable``), whether the processes of a run must agree on it
    (``agreed``: what the run computes, not how or where it runs), and whether ``--evaluate``
    takes it (``evaluate``). ``settings(...)`` selects by them; ``resume_config``, the
    processes' comparison, ``--evaluate`` and ``train.py --help`` read them there.
    """

    cell: str = _setting("lstm", "model", _one_of(CELLS))
    units: tuple[int, ...] = _setting((50,), "model", _UNITS)
    bidirectional: bool = _setting(False, "model", _FLAG)
    # Keras's LSTM(dropout=..., recurrent_dropout=...) for each recurrent layer.
    dropout: float = _setting(0.0, "model", _RATE)
    recurrent_dropout: float = _setting(0.0, "model", _RATE)
    precision: str = _setting("float32", "model", _one_of(PRECISIONS))
    # A language model's Embedding size (``task`` next_token; ``LanguageModel``).
    embed: int = _setting(64, "model", _count())
    epochs: int = _setting(3, "optimizer", _count(), resumable=True)
    batch_size: int = _setting(128, "optimizer", _count())
    learning_rate: float = _setting(1e-3, "optimizer", _LEARNING_RATE, resumable=True)
    optimizer: str = _setting("adam", "optimizer", _one_of(OPTIMIZERS))
    seed: int = _setting(0, "optimizer", _SEED)
    clipnorm: float | None = _setting(None, "optimizer", _CLIPNORM)  # the gradients' norm
    lr_schedule: str = _setting("constant", "optimizer", _one_of(LR_SCHEDULES))  # (optim)
    # Stop after this many epochs without a lower val_loss, keeping the best epoch's weights.
    early_stopping: int | None = _setting(
        None, "optimizer", _count("a positive int (the patience, in epochs) or None", optional=True)
    )
    dataset: str = _setting("mnist", "data", _DATASET)
    sequence: str = _setting("rows", "data", _one_of(data_lib.SEQUENCES))
    # What the run learns (``lstm_jax.training.tasks``); None: the data's (text: next_token).
    task: str | None = _setting(None, "data", _TASK)
    # A text's window: the steps of truncated backpropagation through time.
    bptt: int = _setting(100, "data", _count())
    windows: str = _setting("streams", "data", _one_of(WINDOWS))
    validation_split: float = _setting(0.2, "data", _SPLIT)
    # Cap on training examples; None uses them all. For quick runs (notebooks, smoke tests).
    max_train_examples: int | None = _setting(
        None, "data", _count("a positive int or None", optional=True)
    )
    data_dir: str | None = _setting(
        None, "data", _PATH, resumable=True, agreed=False, evaluate=True
    )
    download: bool = _setting(True, "data", _FLAG, resumable=True, agreed=False, evaluate=True)
    progress: bool = _setting(True, "run", _FLAG, resumable=True, agreed=False, evaluate=True)
    tensorboard: bool = _setting(False, "run", _FLAG, resumable=True, agreed=False)
    distributed: bool = _setting(False, "run", _FLAG, resumable=True, agreed=False)
    resume: bool = _setting(False, "run", _FLAG, resumable=True)  # the switch: not a change

    def __post_init__(self):
        # NumPy scalars as Python's (a run's settings are written as JSON), a path as text.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.generic):
                object.__setattr__(self, f.name, value.item())
            elif isinstance(value, os.PathLike):
                object.__setattr__(self, f.name, os.fspath(value))
        units = self.units
        if isinstance(units, int | np.integer) and not isinstance(units, bool):
            units = (units,)  # units=50, as Keras's LSTM(50)
        if isinstance(units, list | tuple):
            units = tuple(u.item() if isinstance(u, np.generic) else u for u in units)
        object.__setattr__(self, "units", units)

    def validate(self) -> None:
        """Refuses a setting of the wrong type or out of range, before anything runs: each
        field's ``rule``.

        Raises:
          ConfigError: names the first such setting, what it must be, and what it is.
        """
        for f in dataclasses.fields(self):
            value, rule = getattr(self, f.name), f.metadata["rule"]
            if not rule.ok(value):
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f.name, f"{f.name} must be {rule.allowed}; got {shown!r}")


def settings(**metadata) -> tuple[str, ...]:
    """The names of ``Config``'s fields whose metadata has the values given, in order.

    >>> settings(kind="model")
    ('cell', 'units', 'bidirectional', 'dropout', 'recurrent_dropout', 'precision', 'embed')
    >>> settings(evaluate=True)
    ('data_dir', 'download', 'progress')
    """
    return tuple(
        f.name
        for f in dataclasses.fields(Config)
        if all(f.metadata[k] == v for k, v in metadata.items())
    )


# The settings of the model the trainer builds (``steps.make_model``): a model given to the
# trainer is used as it is, and these describe nothing of it.
MODEL_SETTINGS = settings(kind="model")
# Settings a resumed run may change (``resume`` last: not a change a user makes); every other
# one stays as the run was started.
RESUMABLE = settings(resumable=True)


def check_model_settings(config: Config) -> None:
    """Refuses ``MODEL_SETTINGS`` other than the defaults in a run given its own model.

    Raises:
      ConfigError: names each such setting and its value.
    """
    default = Config()
    changed = [n for n in MODEL_SETTINGS if getattr(config, n) != getattr(default, n)]
    if changed:
        raise ConfigError(
            changed[0],
            lambda name: (
                f"{_pairs(name, config, changed)}: these settings build the "
                "Classifier that is trained when no model is given; the model given is trained as "
                "it is, and they would describe nothing of it. Build the model with them (e.g. "
                "Classifier(cell=..., units=..., dropout=...)) and leave them at their defaults."
            ),
        )


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _pairs(name, config: Config, names, saved: Config | None = None) -> str:
    """``setting value`` for each of ``names`` (each named by ``name``), with ``saved``'s
    value beside it if given."""
    return "; ".join(
        f"{name(n)} {_show(getattr(config, n))}"
        + ("" if saved is None else f" (the run's: {_show(getattr(saved, n))})")
        for n in names
    )


# Where a task's recipe differs from the lesson's: ``train.py`` starts from these for the
# task (flags given still win). A character language model of tiny Shakespeare: char-rnn's
# recipe (Adam, clipped gradients, the text as streams) sized to train in 3 minutes on two
# cores, measured in ``benchmarks/NOTES.md``.
TASK_DEFAULTS = {
    "next_token": {
        "units": (256,),
        "batch_size": 32,
        "bptt": 50,
        "learning_rate": 5e-3,
        "lr_schedule": "cosine",
        "clipnorm": 5.0,
        "epochs": 8,
        "validation_split": 0.1,
    },
}


def text_task(dataset: str) -> bool:
    """Whether ``dataset`` names a text (``--dataset FILE.txt``, TFDS's ``tiny_shakespeare``),
    whose task is ``next_token``."""
    return dataset.endswith(".txt") or dataset.split(":")[0] in TEXT_DATASETS


TEXT_DATASETS = ("tiny_shakespeare",)


# Schedules planned over the run's epochs: a resumed run keeps its epochs under them.
PLANNED_SCHEDULES = ("cosine", "warmup_cosine")


def check_resume(saved: Config, config: Config, epochs_done: int) -> None:
    """Refuses to resume a run saved with ``saved`` under ``config`` if any setting outside
    ``RESUMABLE`` differs, ``config.epochs`` is below the epochs already done, or differs
    from the run's under a schedule planned over them (``PLANNED_SCHEDULES``).

    Raises:
      ConfigError: names every such setting, with the run's value.
    """
    changed = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if changed:
        raise ConfigError(
            changed[0],
            lambda name: (
                f"{_pairs(name, config, changed, saved)}: a resumed run keeps the "
                f"settings it was started with; only {', '.join(map(name, RESUMABLE[:-1]))} may "
                "change. Start a new run in another workdir for other settings."
            ),
        )
    if config.epochs < epochs_done:
        raise ConfigError(
            "epochs",
            f"epochs {config.epochs} is fewer than the {epochs_done} the run has finished; "
            f"give at least {epochs_done} (equal: nothing to train, the run is only tested).",
        )
    if saved.lr_schedule in PLANNED_SCHEDULES and config.epochs != saved.epochs:
        raise ConfigError(
            "epochs",
            lambda name: (
                f"{name('epochs')} {config.epochs} (the run's: {saved.epochs}): "
                f"{name('lr_schedule')} {saved.lr_schedule} plans the learning rate over the "
                f"run's {saved.epochs} epochs, down to 0 at the end; under other epochs it would "
                "jump back up (planned again) or stay at 0 (the old plan continued). Resume it "
                f"with its {saved.epochs} epochs, or start a new run for more."
            ),
        )
