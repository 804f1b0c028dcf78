"""A run's directory, its format written and read here alone, and the directory as a place
to write: checked before anything is made, made, locked for one run at a time, written
atomically, and cleared of what a run refused before its first checkpoint made there.

A run's directory holds:

* ``checkpoints/<epoch>/`` (``CHECKPOINTS``; orbax, ``lstm_jax.training.checkpoints``): the
  training state, and ``meta`` (JSON, ``new_meta``), all that is needed to use the
  checkpoint without the code that trained it:

  * ``format``: ``FORMAT``, the version of this layout;
  * ``model``: the Flax module as data (``module_spec``), rebuilt by ``module_from_spec``;
  * ``config``: the run's ``Config``, ``history``: one record per epoch;
  * ``num_classes``, ``image_shape`` (``[H, W, C]``, or ``[T, F]`` for sequences) and
    ``input_shape`` (``[T, F]``);
  * ``data``: the data's name and shapes, whether it was your own arrays and had lengths;

* ``metrics.json`` and ``curves.png`` (``write_run_files``), ``tensorboard/`` with
  ``--tensorboard``, and ``.lock`` while a run holds it (``WorkdirLock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import data as data_lib
from lstm_jax._process import shutdown
from lstm_jax.errors import CheckpointError, CheckpointGone, ConfigError, RunFileError
from lstm_jax.training.checkpoints import finished_epochs

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
CURVES = "curves.png"
TENSORBOARD = "tensorboard"
LOCK = ".lock"

FORMAT = 1  # the version of what a checkpoint's meta holds; bumped when that changes


# --------------------------------------------------------------------------------------
# A Flax module as data
# --------------------------------------------------------------------------------------


def module_spec(module: nn.Module) -> dict:
    """``module`` as JSON data: its class's import path and its fields, recursively.

    Fields may be JSON scalars, dtypes, tuples or lists, and other modules.

    >>> from lstm_jax.linen import LSTM, Bidirectional
    >>> spec = module_spec(Bidirectional(LSTM(8, return_sequences=True)))
    >>> spec["class"], spec["fields"]["layer"]["module"]["fields"]["units"]
    ('lstm_jax.linen.Bidirectional', 8)
    >>> module_from_spec(spec) == Bidirectional(LSTM(8, return_sequences=True))
    True

    Raises:
      ValueError: a field holds something else (a function, an array); names it.
    """
    cls = type(module)
    fields = {}
    for f in dataclasses.fields(module):
        if f.name in ("parent", "name") or not f.init:
            continue
        fields[f.name] = _to_data(getattr(module, f.name), f"{cls.__name__}.{f.name}")
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "fields": fields}


def _to_data(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, nn.Module):
        return {"module": module_spec(value)}
    if isinstance(value, tuple | list):
        return [_to_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    try:
        return {"dtype": jnp.dtype(value).name}
    except TypeError:
        pass
    raise ValueError(
        f"{where} = {value!r} cannot be saved with the run (fields must be numbers, strings, "
        "dtypes, tuples or modules)"
    )


def module_from_spec(spec: dict) -> nn.Module:
    """The module ``module_spec`` described.

    Raises:
      ValueError: the class cannot be imported here (e.g. it was defined in a notebook).
    """
    path = spec["class"]
    if "fields" not in spec:
        raise ValueError(
            f"the run's model, a {path}, was not saved with it ({spec.get('unsaved')}); pass "
            "the model itself: load_run(workdir, model=...)"
        )
    module_name, _, qualname = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), qualname)
    except (ImportError, AttributeError):
        cls = None
    if module_name == "__main__" or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(
            f"the run's model is a {path}, which cannot be imported here; pass the model "
            "itself: load_run(workdir, model=...)"
        )
    return cls(**{k: _from_data(v) for k, v in spec["fields"].items()})


def _from_data(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_from_data(v) for v in value)
    if isinstance(value, dict) and "module" in value:
        return module_from_spec(value["module"])
    if isinstance(value, dict) and "dtype" in value:
        return jnp.dtype(value["dtype"])
    return value


def model_spec_or_reason(model: nn.Module) -> dict:
    """``module_spec(model)``, or the reason it cannot be saved (``load_run`` then
    needs the model passed in)."""
    try:
        return module_spec(model)
    except ValueError as e:
        cls = type(model)
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "unsaved": str(e)}


# --------------------------------------------------------------------------------------
# A run's meta, and resuming it
# --------------------------------------------------------------------------------------


def new_meta(model: nn.Module, ds: data_lib.Dataset, image_shape, input_shape, config) -> dict:
    """What every checkpoint of a new run saves besides its history (``history`` is added
    at each save): the module docstring's list."""
    return {
        "format": FORMAT,
        "model": model_spec_or_reason(model),
        "num_classes": ds.num_classes,
        "image_shape": list(image_shape),
        "input_shape": list(input_shape),
        "config": dataclasses.asdict(config),
        "data": {
            "name": ds.name,
            "from_arrays": ds.from_arrays,
            "train": [len(ds.train), *image_shape],
            "lengths": ds.train.lengths is not None,
            "task": ds.task,
            "targets": list(ds.train.labels.shape[1:]),
            "vocabulary": ds.vocabulary,
        },
    }


def read_meta(workdir: str | os.PathLike) -> tuple[pathlib.Path, int, dict]:
    """``(checkpoints directory, newest epoch, its meta)`` of the run in ``workdir``.

    Reads files only (no orbax, no JAX backend started), so that ``train.py --resume`` can
    read the run's settings before it sets up the devices.

    Raises:
      CheckpointError: no run there, none finished an epoch, or another checkpoint format.
    """
    workdir = pathlib.Path(workdir).expanduser().resolve()
    directory = workdir / CHECKPOINTS
    if not workdir.is_dir():
        raise CheckpointError(f"no run in {workdir}: there is no such directory")
    if not directory.is_dir():
        raise CheckpointError(f"no run in {workdir}: it holds no checkpoints directory")
    epochs = finished_epochs(directory)
    if not epochs:
        unfinished = sorted(p.name for p in directory.iterdir() if "tmp" in p.name)
        raise CheckpointError(
            f"the run in {workdir} has no finished checkpoint"
            + (f" (only the unfinished {', '.join(unfinished)})" if unfinished else "")
            + ": it stopped before its first epoch ended; start it again"
        )
    epoch = epochs[-1]
    path = directory / str(epoch) / "meta" / "metadata"
    try:
        meta = json.loads(path.read_text())
        version = meta.get("format", 0) if isinstance(meta, dict) else None
    except (OSError, ValueError) as e:
        if not path.parent.parent.exists():
            raise CheckpointGone(epoch, directory) from e
        raise CheckpointError(
            f"the checkpoint of epoch {epoch} in {directory / str(epoch)} is half-written or "
            f"corrupt: {path.name} cannot be read ({type(e).__name__}: {e})"
        ) from e
    if version != FORMAT:
        raise CheckpointError(
            f"the run in {workdir} was saved in checkpoint format {version}; this lstm_jax "
            f"reads format {FORMAT}. Load it with the lstm_jax that trained it, or train again."
        )
    return directory, epoch, meta


def check(workdir: str | os.PathLike) -> pathlib.Path:
    """The absolute ``workdir``, if it is (or can be made) a writable directory; creates
    nothing, so that a run refused before training leaves nothing behind."""
    path = pathlib.Path(workdir).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError("workdir", f"workdir {workdir} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("workdir", f"workdir {workdir} cannot be written: {existing} is not")
    return path


def make(path: pathlib.Path) -> None:
    """Makes ``path`` (and its parents) and proves it writable, or refuses it saying why."""
    if (path / CHECKPOINTS).exists() and not (path / CHECKPOINTS).is_dir():
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
        raise ConfigError("workdir", f"workdir {path} cannot be written: {e.strerror or e}") from e


def missing(workdir: pathlib.Path) -> list[pathlib.Path]:
    """What a run in ``workdir`` creates and is not there yet: the lock file, the checkpoints
    directory, ``workdir`` and its missing parents, innermost first."""
    paths = [workdir / LOCK, workdir / CHECKPOINTS, workdir, *workdir.parents]
    return [p for p in paths if not p.exists()]


def remove_unless_saved(workdir: pathlib.Path, new_paths: list[pathlib.Path]) -> None:
    """After a run that failed before its first checkpoint: removes ``new_paths`` (see
    ``missing``), directories only while empty, so that a refused run leaves nothing."""
    if finished_epochs(workdir / CHECKPOINTS):
        return
    for path in new_paths:
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()


class WorkdirLock:
    """One run at a time in a workdir: an exclusive ``flock`` on ``workdir/.lock``, which
    the operating system releases when the process ends, however it ends (so a crashed run
    leaves nothing stuck). The file says who holds it."""

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / LOCK
        self._file = None

    def __enter__(self):
        import fcntl
        import socket

        f = open(self.path, "a+")  # noqa: SIM115 (held open while the run lasts)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(
                "workdir",
                f"workdir {self.path.parent} is in use by another run ({holder}); wait for it "
                "to end, or choose another workdir",
            ) from e
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
        ) from e


def check_free_space(workdir: pathlib.Path, state, keep: int) -> None:
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


def refuse_finished_run(workdir: pathlib.Path) -> None:
    """A workdir that holds checkpoints belongs to a run: it is resumed, not overwritten.

    Reads the directory only: in a multi-process run, an orbax manager opened here by some
    processes and not others would leave their collectives out of step."""
    epochs = finished_epochs(workdir / CHECKPOINTS)
    if epochs:
        raise ConfigError(
            "workdir",
            f"workdir {workdir} already holds checkpoints (epoch {epochs[-1]}): resume that "
            "run, or choose another workdir.",
        )


def describe_kept(directory: str | os.PathLike) -> str:
    """The finished checkpoints in ``directory``, in a sentence: e.g. ``The checkpoints of
    epochs 1, 2 are kept.``"""
    epochs = finished_epochs(directory)
    if not epochs:
        return "No checkpoint was saved."
    if len(epochs) == 1:
        return f"The checkpoint of epoch {epochs[0]} is kept."
    return f"The checkpoints of epochs {', '.join(map(str, epochs))} are kept."


def make_default(parent: str | os.PathLike = "runs") -> tuple[pathlib.Path, list[pathlib.Path]]:
    """A new ``parent/<date-time>``, made here so that no other run can take the same name
    (a second run in the same second gets ``-2``, and so on); returns it, absolute, and the
    directories made for it (``remove_if_empty`` takes them away again)."""
    parent = pathlib.Path(parent).absolute()
    made = [] if parent.exists() else [parent]
    parent.mkdir(parents=True, exist_ok=True)
    base = parent / time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path, [path, *made]
        except FileExistsError:
            continue
    raise RunFileError(f"no free workdir name next to {base}")


def remove_if_empty(directories: list[pathlib.Path]) -> None:
    """Removes each of ``directories`` that is empty (a run refused before training)."""
    for path in directories:
        with contextlib.suppress(OSError):
            path.rmdir()


def write_run_files(
    path: pathlib.Path, metrics: dict, plot: Callable[[pathlib.Path], None]
) -> None:
    """``metrics.json`` (``metrics``) and ``curves.png`` (drawn by ``plot(path)``), each
    written atomically."""
    text = json.dumps(metrics, indent=2) + "\n"
    write_atomically(path / METRICS, lambda p: p.write_text(text))
    write_atomically(path / CURVES, plot)
