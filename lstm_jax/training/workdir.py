"""The run's directory as a place to write: checked before anything is made, made, locked
for one run at a time, written atomically, and cleared of what a run refused before its
first checkpoint made there. What its files hold is ``lstm_jax.training.runs``'s to say.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import time
from collections.abc import Callable

import jax
import numpy as np

from lstm_jax._process import shutdown
from lstm_jax.errors import ConfigError, RunFileError
from lstm_jax.training.checkpoints import finished_epochs


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
        raise ConfigError("workdir", f"workdir {path} cannot be written: {e.strerror or e}") from e


def missing(workdir: pathlib.Path) -> list[pathlib.Path]:
    """What a run in ``workdir`` creates and is not there yet: the lock file, the checkpoints
    directory, ``workdir`` and its missing parents, innermost first."""
    paths = [workdir / ".lock", workdir / "checkpoints", workdir, *workdir.parents]
    return [p for p in paths if not p.exists()]


def remove_unless_saved(workdir: pathlib.Path, new_paths: list[pathlib.Path]) -> None:
    """After a run that failed before its first checkpoint: removes ``new_paths`` (see
    ``missing``), directories only while empty, so that a refused run leaves nothing."""
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
    epochs = finished_epochs(workdir / "checkpoints")
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
