"""Checkpoints with orbax: one per epoch end, written atomically, resumable.

Orbax writes each checkpoint into a temporary directory and renames it into place when
complete, so a run killed mid-save leaves the earlier checkpoints as they were, and the
newest complete one is what ``restore_latest`` finds.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from lstm_jax._process import console
from lstm_jax.errors import CheckpointError, CheckpointGone


def finished_epochs(directory: str | os.PathLike) -> list[int]:
    """The epochs whose checkpoints in ``directory`` are complete, oldest first: orbax
    renames a checkpoint to its epoch number only once it is whole."""
    directory = pathlib.Path(directory)
    names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    return sorted(int(n) for n in names if n.isdigit())


class Checkpointer:
    """Saves ``(state, meta)`` under ``directory/<epoch>``; ``meta`` is JSON. With
    ``read_only``, it only restores, and writes nothing (the directory may be read-only)."""

    def __init__(
        self, directory: str | pathlib.Path, *, max_to_keep: int = 3, read_only: bool = False
    ):
        self.directory = pathlib.Path(directory).resolve()
        self.max_to_keep = max_to_keep
        self._failed_write: console.ErrorsHeld | console.NotHeld | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
        )
        absl = logging.getLogger("absl")
        level = absl.level
        if read_only:  # orbax warns that a manager it was asked to open read-only is so
            absl.setLevel(logging.ERROR)
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={
                    "state": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(),
                },
            )
        finally:
            absl.setLevel(level)

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        """Raises CheckpointError if it cannot be written (e.g. a full disk); the earlier
        checkpoints are then as they were."""
        held = console.errors_held()  # train.py's choice (hold_writer_errors)
        try:
            self._manager.save(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
            self._manager.wait_until_finished()
        except BaseException as e:  # OSError, or orbax's and tensorstore's wrappings of one
            if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: not a write
                held.release(show=True)
                raise
            kept = ", ".join(map(str, finished_epochs(self.directory))) or "none"
            code = re.search(r"os_error_code='(\d+)'", str(e))
            if isinstance(e, OSError) and e.strerror:
                reason = e.strerror
            elif code:  # tensorstore's wording of an OSError, e.g. a full disk
                reason = os.strerror(int(code.group(1)))
            else:
                reason = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            self._failed_write = held  # released by close(), once orbax's threads have ended
            raise CheckpointError(
                f"cannot save the checkpoint of epoch {epoch} in {self.directory}: {reason}. "
                f"Earlier checkpoints are kept (epochs: {kept})."
            ) from e
        held.release(show=True)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict]:
        """``(epoch, state, meta)`` of the newest checkpoint (see ``restore``)."""
        epoch = self.latest_epoch()
        if epoch is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        return (epoch, *self.restore(epoch, abstract_state))

    def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict]:
        """``(state, meta)`` of the checkpoint of ``epoch``, the state restored into the
        structure, shapes and shardings of ``abstract_state`` (a pytree of
        ``jax.ShapeDtypeStruct``).

        Raises:
          CheckpointGone: it was removed while read (by the run writing newer ones).
          CheckpointError: it is corrupt or belongs to another model; nothing on disk is
            changed.
        """
        try:
            return self._restore(epoch, abstract_state)
        except CheckpointError as e:
            if epoch not in finished_epochs(self.directory):
                raise CheckpointGone(epoch, self.directory) from e
            raise

    def _restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict]:
        # Compare shapes from the metadata first: a restore into the wrong shapes fails deep
        # inside orbax and leaves its asyncio reads pending.
        try:
            saved = _signature(self._manager.item_metadata(epoch)["state"].tree)
        except Exception as e:
            raise CheckpointError(
                f"cannot restore the checkpoint of epoch {epoch} in "
                f"{self.directory / str(epoch)}: it is corrupt. No checkpoint was changed. "
                f"Details: {type(e).__name__}: {str(e)[:400]}"
            ) from e
        if saved != _signature(abstract_state):
            raise CheckpointError(
                f"the checkpoint of epoch {epoch} in {self.directory / str(epoch)} "
                "holds parameters of other shapes than this model's: it was written with another "
                "cell, units, bidirectional, optimizer or data set (resume with those). No "
                "checkpoint was changed."
            )
        try:
            restored = self._manager.restore(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # orbax raises many types for unreadable or mismatched data
            raise CheckpointError(
                f"cannot restore the checkpoint of epoch {epoch} in "
                f"{self.directory / str(epoch)}: it is corrupt or was written by a different "
                f"model or optimizer (the same cell, units, bidirectional, optimizer and "
                f"data set are needed). No checkpoint was changed. Details: "
                f"{type(e).__name__}: {str(e)[:400]}"
            ) from e
        return restored.state, dict(restored.meta)

    def close(self) -> None:
        try:
            self._manager.close()
        finally:
            if self._failed_write is not None:
                time.sleep(0.5)  # the failed write's last callbacks print meanwhile, held
                self._failed_write.release(show=False)
                self._failed_write = None


def _signature(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    """The sorted (shape, dtype) of every array: equal for checkpoints of the same model."""
    return sorted((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(tree))
