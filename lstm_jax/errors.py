"""The errors lstm_jax raises for what a user can act on: each message says what is wrong
and what to do. ``train.py`` reports any of ``USER_ERRORS`` as one line, without a traceback.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable


class ConfigError(ValueError):
    """A setting is out of range; the message starts with its name (``setting``) and says
    what is allowed.

    ``message`` is the text, or a function that writes it given how to name a setting
    (``name(setting) -> str``), for a message that names several: the library names them
    as ``Config`` does, ``train.py`` as its flags (``naming``).
    """

    def __init__(self, setting: str, message: str | Callable[[Callable[[str], str]], str]):
        self.setting = setting
        self._write = message if callable(message) else None
        super().__init__(message(str) if callable(message) else message)

    def naming(self, name: Callable[[str], str]) -> str:
        """The message with the settings it names named by ``name``."""
        if self._write is not None:
            return self._write(name)
        text = str(self)
        return (
            name(self.setting) + text[len(self.setting) :]
            if text.startswith(self.setting)
            else text
        )


class DataError(RuntimeError):
    """The data set cannot be loaded; the message says why and what to do."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored; the message says which and why."""


class CheckpointGone(CheckpointError):
    """The checkpoint being read was removed meanwhile: the run that wrote it is still
    writing newer ones, and keeps only the newest few."""

    def __init__(self, epoch: int, directory: pathlib.Path):
        super().__init__(f"the checkpoint of epoch {epoch} in {directory} was removed while read")


class TrainingDiverged(RuntimeError):
    """A loss or the parameters became NaN or infinite; nothing of that epoch was saved.

    ``step`` is the first optimizer step whose loss, gradients or update was not finite
    (``None`` when the training epoch was finite and its validation pass was not); ``epoch``
    that epoch.
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


class DistributedError(RuntimeError):
    """The processes of a run cannot start or go on together; says which and what to do."""


class ProcessLost(DistributedError):
    """A collective failed in a multi-process run: another process has stopped."""


USER_ERRORS = (
    ConfigError,
    DataError,
    CheckpointError,
    TrainingDiverged,
    DeviceError,
    RunFileError,
    DistributedError,
)
