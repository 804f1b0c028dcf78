"""Checkpoints with orbax: one per epoch end, written atomically, resumable.

Orbax writes each checkpoint into a temporary directory and renames it into place when
complete, so a run killed mid-save leaves the earlier checkpoints as they were, and the
newest complete one is what ``restore_latest`` finds.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored; the message says which and why."""


class Checkpointer:
    """Saves ``(state, meta)`` under ``directory/<epoch>``; ``meta`` is JSON."""

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3):
        self.directory = pathlib.Path(directory).resolve()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
        )

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self._manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict]:
        """Restores the newest checkpoint into the structure, shapes and shardings of
        ``abstract_state`` (a pytree of ``jax.ShapeDtypeStruct``).

        Raises:
          CheckpointError: nothing to restore, or the checkpoint is corrupt or belongs to
            another model; nothing on disk is changed.
        """
        epoch = self.latest_epoch()
        if epoch is None:
            raise CheckpointError(f"--resume: no checkpoint in {self.directory}")
        try:
            restored = self._manager.restore(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # orbax raises many types for unreadable or mismatched data
            raise CheckpointError(
                f"--resume: cannot restore the checkpoint of epoch {epoch} in "
                f"{self.directory / str(epoch)}: it is corrupt or was written by a different "
                f"model or optimizer (same --cell, --units, --bidirectional, --optimizer and "
                f"data set are needed). No checkpoint was changed. Details: "
                f"{type(e).__name__}: {str(e)[:400]}"
            ) from None
        _check_same_structure(abstract_state, restored.state, epoch)
        return epoch, restored.state, dict(restored.meta)

    def close(self) -> None:
        self._manager.close()


def _check_same_structure(expected: Any, got: Any, epoch: int) -> None:
    shapes = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), expected)
    got_shapes = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), got)
    if shapes != got_shapes:
        raise CheckpointError(
            f"--resume: the checkpoint of epoch {epoch} holds parameters of other shapes than "
            "this model's; resume with the flags it was written with."
        )
