"""A run's settings: ``Config``, the choices each setting has, and which may change when a
run is resumed. The defaults are the lesson's recipe: LSTM(50) then Dense(10) on MNIST read
row by row, Adam at 1e-3, batch 128, 3 epochs, the last 20% of the training set held out.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lstm_jax import data as data_lib
from lstm_jax.errors import ConfigError
from lstm_jax.recurrent import CELLS

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")


PRECISIONS = ("float32", "bfloat16")

LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "reduce_on_plateau")


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    # Keras's LSTM(dropout=..., recurrent_dropout=...) for each recurrent layer.
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    clipnorm: float | None = None  # clip the gradients' global norm to this
    lr_schedule: str = "constant"  # one of LR_SCHEDULES (lstm_jax.optim)
    # Stop after this many epochs without a lower val_loss, keeping the best epoch's weights.
    early_stopping: int | None = None
    tensorboard: bool = False  # write TensorBoard scalars into the workdir

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
        for rate in ("dropout", "recurrent_dropout"):
            need(0 <= getattr(self, rate) < 1, rate, "at least 0 and below 1 (Keras's rates)")
        need(
            self.clipnorm is None or 0 < self.clipnorm < float("inf"),
            "clipnorm",
            "positive and finite",
        )
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", one_of(LR_SCHEDULES))
        need(
            self.early_stopping is None or self.early_stopping > 0,
            "early_stopping",
            "a positive number of epochs (the patience)",
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
    "tensorboard",
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
