"""A run's settings: ``Config``, the choices each setting has, and which may change when a
run is resumed. The defaults are the lesson's recipe: LSTM(50) then Dense(10) on MNIST read
row by row, Adam at 1e-3, batch 128, 3 epochs, the last 20% of the training set held out.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from lstm_jax import data as data_lib
from lstm_jax.errors import ConfigError
from lstm_jax.recurrent import CELLS

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")


PRECISIONS = ("float32", "bfloat16")

LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "reduce_on_plateau")


KINDS = ("model", "optimizer", "data", "run")


def _setting(default, kind: str, *, resumable=False, agreed=True, evaluate=False):
    """A ``Config`` field and what it is (see ``Config``)."""
    assert kind in KINDS, kind
    meta = {"kind": kind, "resumable": resumable, "agreed": agreed, "evaluate": evaluate}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a run depends on; the defaults are the lesson's recipe.

    Each field's metadata says what it is (``kind``: ``model``, ``data``, ``optimizer`` or
    ``run``), whether a resumed run may change it (``resumable``), whether the processes of
    a run must agree on it (``agreed``: what the run computes, not how or where it runs),
    and whether ``--evaluate`` takes it (``evaluate``). ``settings(...)`` selects by them;
    ``resume_config``, the processes' comparison, ``--evaluate`` and ``train.py --help``
    read them there.
    """

    cell: str = _setting("lstm", "model")
    units: tuple[int, ...] = _setting((50,), "model")
    bidirectional: bool = _setting(False, "model")
    # Keras's LSTM(dropout=..., recurrent_dropout=...) for each recurrent layer.
    dropout: float = _setting(0.0, "model")
    recurrent_dropout: float = _setting(0.0, "model")
    precision: str = _setting("float32", "model")
    epochs: int = _setting(3, "optimizer", resumable=True)
    batch_size: int = _setting(128, "optimizer")
    learning_rate: float = _setting(1e-3, "optimizer", resumable=True)
    optimizer: str = _setting("adam", "optimizer")
    seed: int = _setting(0, "optimizer")
    clipnorm: float | None = _setting(None, "optimizer")  # clip the gradients' global norm
    lr_schedule: str = _setting("constant", "optimizer")  # one of LR_SCHEDULES (optim)
    # Stop after this many epochs without a lower val_loss, keeping the best epoch's weights.
    early_stopping: int | None = _setting(None, "optimizer")
    dataset: str = _setting("mnist", "data")
    sequence: str = _setting("rows", "data")
    validation_split: float = _setting(0.2, "data")
    # Cap on training examples; None uses them all. For quick runs (notebooks, smoke tests).
    max_train_examples: int | None = _setting(None, "data")
    data_dir: str | None = _setting(None, "data", resumable=True, agreed=False, evaluate=True)
    download: bool = _setting(True, "data", resumable=True, agreed=False, evaluate=True)
    progress: bool = _setting(True, "run", resumable=True, agreed=False, evaluate=True)
    tensorboard: bool = _setting(False, "run", resumable=True, agreed=False)  # its scalars
    distributed: bool = _setting(False, "run", resumable=True, agreed=False)
    resume: bool = _setting(False, "run", resumable=True)  # the switch itself: not a change

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
        """Refuses a setting of the wrong type or out of range, before anything runs.

        Raises:
          ConfigError: names the first such setting, what it must be, and what it is.
        """

        def need(ok: bool, setting: str, allowed: str):
            if not ok:
                value = getattr(self, setting)
                value = list(value) if isinstance(value, tuple) else value
                raise ConfigError(setting, f"{setting} must be {allowed}; got {value!r}")

        def one_of(setting: str, options) -> None:
            value = getattr(self, setting)
            need(isinstance(value, str) and value in options, setting, _one_of(options))

        def count(setting: str, *, optional: bool = False, what: str = "a positive int"):
            value = getattr(self, setting)
            need((optional and value is None) or (_is_int(value) and value > 0), setting, what)

        one_of("cell", CELLS)
        need(
            isinstance(self.units, tuple)
            and len(self.units) > 0
            and all(_is_int(u) and u > 0 for u in self.units),
            "units",
            "positive ints (e.g. 50 or 128,64)",
        )
        for flag in (
            "bidirectional",
            "download",
            "resume",
            "distributed",
            "progress",
            "tensorboard",
        ):
            need(isinstance(getattr(self, flag), bool), flag, "True or False")
        count("epochs")
        count("batch_size")
        need(
            _is_real(self.learning_rate) and 0 < self.learning_rate <= np.finfo(np.float32).max,
            "learning_rate",
            "positive and finite in float32 (at most 3.4e38)",
        )
        one_of("optimizer", OPTIMIZERS)
        need(isinstance(self.dataset, str) and self.dataset != "", "dataset", "a name or a path")
        need(_is_int(self.seed) and 0 <= self.seed < 2**32, "seed", "an int from 0 to 2**32 - 1")
        one_of("sequence", data_lib.SEQUENCES)
        need(
            _is_real(self.validation_split) and 0 < self.validation_split < 1,
            "validation_split",
            "strictly between 0 and 1",
        )
        need(self.data_dir is None or isinstance(self.data_dir, str), "data_dir", "a path or None")
        one_of("precision", PRECISIONS)
        count("max_train_examples", optional=True, what="a positive int or None")
        for rate in ("dropout", "recurrent_dropout"):
            value = getattr(self, rate)
            need(_is_real(value) and 0 <= value < 1, rate, "at least 0 and below 1 (Keras's rates)")
        need(
            self.clipnorm is None or (_is_real(self.clipnorm) and 0 < self.clipnorm < np.inf),
            "clipnorm",
            "a positive, finite number or None",
        )
        one_of("lr_schedule", LR_SCHEDULES)
        count(
            "early_stopping",
            optional=True,
            what="a positive int (the patience, in epochs) or None",
        )


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value) -> bool:
    """A number that is not a bool; NaN fails every range check that follows."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _one_of(options) -> str:
    return "one of " + ", ".join(options)


def settings(**metadata) -> tuple[str, ...]:
    """The names of ``Config``'s fields whose metadata has the values given, in order.

    >>> settings(kind="model")
    ('cell', 'units', 'bidirectional', 'dropout', 'recurrent_dropout', 'precision')
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
