"""``lstm_jax.training.rundir``: a run directory's format (a model as data, the meta read
back), and the directory as a place to write (one run at a time, files whole or not at all)."""

import json

import jax.numpy as jnp
import pytest

from lstm_jax import linen as lnn
from lstm_jax.errors import CheckpointError, ConfigError, RunFileError
from lstm_jax.training import rundir


@pytest.mark.parametrize(
    "model",
    [
        lnn.Classifier(cell="gru", units=(8, 4), bidirectional=True, dtype=jnp.bfloat16),
        lnn.Sequential([lnn.Masking(), lnn.Bidirectional(lnn.LSTM(8, return_sequences=True))]),
    ],
)
def test_a_model_saved_as_data_is_rebuilt_equal(model):
    spec = rundir.module_spec(model)
    assert json.loads(json.dumps(spec)) == spec  # JSON as it is
    assert rundir.module_from_spec(spec) == model


def test_a_model_that_cannot_be_saved_says_why_and_load_run_needs_it():
    spec = rundir.model_spec_or_reason(lnn.Dense(3, activation=None, dtype=lambda x: x))
    assert "cannot be saved with the run" in spec["unsaved"]
    with pytest.raises(ValueError, match="pass the model itself"):
        rundir.module_from_spec(spec)


def test_a_directory_without_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        rundir.read_meta(tmp_path / "none")
    with pytest.raises(CheckpointError, match="no checkpoints directory"):
        rundir.read_meta(tmp_path)
    (tmp_path / rundir.CHECKPOINTS).mkdir()
    with pytest.raises(CheckpointError, match="no finished checkpoint"):
        rundir.read_meta(tmp_path)


def test_one_run_at_a_time_holds_the_directory(tmp_path):
    with rundir.WorkdirLock(tmp_path):
        assert (tmp_path / rundir.LOCK).exists()
        with pytest.raises(ConfigError, match="in use by another run"):
            with rundir.WorkdirLock(tmp_path):
                pass
    with rundir.WorkdirLock(tmp_path):  # released when the run ends
        pass


def test_a_file_is_written_whole_or_left_as_it_was(tmp_path):
    path = tmp_path / rundir.METRICS
    path.write_text("old")

    def fails(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(RunFileError, match="disk full.*unchanged"):
        rundir.write_atomically(path, fails)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [path.name]
    rundir.write_run_files(tmp_path, {"test_accuracy": 0.5}, lambda p: p.write_bytes(b"png"))
    assert json.loads(path.read_text()) == {"test_accuracy": 0.5}
    assert (tmp_path / rundir.CURVES).read_bytes() == b"png"
