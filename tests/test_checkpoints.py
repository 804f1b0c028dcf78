"""``lstm_jax.training.checkpoints``: a training state and its meta saved and restored, and a
save that leaves a library caller's process as it was."""

import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax._process import console
from lstm_jax.training.checkpoints import Checkpointer, finished_epochs


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def test_a_state_and_its_meta_come_back_as_saved(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(7)}
    checkpointer = Checkpointer(tmp_path / "checkpoints", max_to_keep=2)
    for epoch in (1, 2, 3):
        scaled = {k: v * epoch for k, v in state.items()}
        checkpointer.save(epoch, scaled, {"epoch": epoch})
    checkpointer.close()
    assert finished_epochs(tmp_path / "checkpoints") == [2, 3]  # max_to_keep
    reader = Checkpointer(tmp_path / "checkpoints", read_only=True)
    epoch, restored, meta = reader.restore_latest(_abstract(state))
    reader.close()
    assert (epoch, meta) == (3, {"epoch": 3})
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3) * 3)


@pytest.mark.parametrize("held", [False, True])
def test_a_save_swaps_standard_error_only_where_the_command_line_asked(held, tmp_path, monkeypatch):
    monkeypatch.setitem(console._writers, "held", held)
    absl = logging.getLogger("absl")
    seen = []
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    manager_save = checkpointer._manager.save

    def save(*args, **kwargs):
        seen.append((sys.stderr, absl.propagate))
        return manager_save(*args, **kwargs)

    monkeypatch.setattr(checkpointer._manager, "save", save)
    before = (sys.stderr, absl.propagate)
    checkpointer.save(1, {"w": jnp.ones(3)}, {})
    checkpointer.close()
    assert (seen[0] == before) is (not held)
    assert (sys.stderr, absl.propagate) == before  # as it was, after
