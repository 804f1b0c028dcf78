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
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
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
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        # Compare shapes from the metadata first: a restore into the wrong shapes fails deep
        # inside orbax and leaves its asyncio reads pending.
        try:
            saved = _signature(self._manager.item_metadata(epoch)["state"].tree)
        except Exception as e:
            raise CheckpointError(
                f"cannot restore the checkpoint of epoch {epoch} in "
                f"{self.directory / str(epoch)}: it is corrupt. No checkpoint was changed. "
                f"Details: {type(e).__name__}: {str(e)[:400]}"
            ) from None
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
            ) from None
        return epoch, restored.state, dict(restored.meta)

    def close(self) -> None:
        self._manager.close()


def _signature(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    """The sorted (shape, dtype) of every array: equal for checkpoints of the same model."""
    return sorted((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(tree))
