"""Using a trained run: load_run on any devices, predict, evaluate, resume from the run's own
settings, and any Flax module through the trainer. Fake data (TFDS's mock_data)."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

import lstm_jax
from lstm_jax import data, training
from lstm_jax import linen as lnn
from lstm_jax.training import rundir
from lstm_jax.training.checkpoints import CheckpointError
from tests.fakes import FAKE, params_of, run_fake

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"


def _train_py(*args):
    """``train.py`` on fake data (512 examples), in its own process."""
    return subprocess.run(
        [sys.executable, SCRIPTS / "train_on_fake_data.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _fake_images(n=512):
    with tfds.testing.mock_data(num_examples=n):
        return data.load("mnist", data_dir="unused").test


# ------------------------------------------------------------------------- load_run


@pytest.mark.slow
def test_run_trained_on_two_devices_loads_on_one(tmp_path):
    workdir, tfds_dir = tmp_path / "run", tmp_path / "tfds"
    out = _train_py(
        *("--cell", "gru", "--units", "12", "--epochs", "1", "--batch-size", "64"),
        *("--no-progress", "--cpu-devices", "2", "--workdir", workdir, "--data-dir", tfds_dir),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "devices: 2 x cpu" in out.stdout
    assert jax.device_count() == 1

    run = lstm_jax.load_run(workdir)
    assert run.epoch == 1 and len(run.history) == 1
    assert run.model == lnn.Classifier(cell="gru", units=(12,), num_classes=10)
    assert run.config.cell == "gru" and run.num_classes == 10
    assert {leaf.sharding.device_set.pop() for leaf in jax.tree.leaves(run.params)} == {
        jax.devices()[0]
    }
    with tfds.testing.mock_data(num_examples=512):
        result = run.evaluate("test", data_dir=str(tfds_dir))
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert result["examples"] == 512
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert result["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake_run")
    result = run_fake(tmp, units=(8,), epochs=1)
    return tmp / "run", result


@pytest.mark.slow
def test_predict_takes_images_as_tfds_gives_them_or_sequences(fake_run):
    workdir, result = fake_run
    run = lstm_jax.load_run(workdir)
    test = _fake_images()
    images = test.images[:40]  # uint8 [40, 28, 28, 1]
    x = data.to_sequences(images, "rows")
    logits = run.model.apply({"params": params_of(result)}, x)
    expected = np.argmax(logits, -1)
    np.testing.assert_array_equal(run.predict(images), expected)
    np.testing.assert_array_equal(run.predict(images[..., 0]), expected)  # [N, 28, 28]
    np.testing.assert_array_equal(run.predict(np.asarray(x)), expected)  # prepared sequences
    np.testing.assert_array_equal(run.predict(images, batch_size=7), expected)
    proba = run.predict_proba(images)
    np.testing.assert_allclose(proba, jax.nn.softmax(logits), atol=1e-6)
    np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-5)
    assert run.predict(images[:0]).shape == (0,)


@pytest.mark.slow
@pytest.mark.parametrize(
    "inputs",
    [
        np.zeros((3, 28, 28, 3), np.uint8),  # other channels
        np.zeros((3, 28, 28, 1), np.float32),  # float images
        np.zeros((3, 784), np.uint8),  # flattened
        np.zeros((3, 27, 28), np.float32),  # other sequence length
    ],
    ids=["channels", "float images", "flat", "steps"],
)
def test_predict_refuses_other_inputs_saying_what_it_expects(fake_run, inputs):
    run = lstm_jax.load_run(fake_run[0])
    expected = r"expected uint8 images \[3, 28, 28\] or \[3, 28, 28, 1\], or float sequences"
    with pytest.raises(ValueError, match=expected):
        run.predict(inputs)


@pytest.mark.slow
def test_no_run_half_written_run_and_other_format_are_clear_errors(fake_run, tmp_path):
    with pytest.raises(CheckpointError, match="no run in .*: there is no such directory"):
        lstm_jax.load_run(tmp_path / "typo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no run in .*: it holds no checkpoints directory"):
        lstm_jax.load_run(tmp_path / "empty")

    # Killed while writing its first checkpoint: orbax's temporary directory only.
    half = tmp_path / "half"
    shutil.copytree(
        fake_run[0] / "checkpoints" / "1", half / "checkpoints" / "1.orbax-checkpoint-tmp-7"
    )
    with pytest.raises(CheckpointError, match="no finished checkpoint .*stopped before its first"):
        lstm_jax.load_run(half)

    other = tmp_path / "other"
    shutil.copytree(fake_run[0], other)
    meta_file = other / "checkpoints" / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format": rundir.FORMAT + 1}))
    with pytest.raises(CheckpointError, match=f"checkpoint format {rundir.FORMAT + 1}; this "):
        lstm_jax.load_run(other)
    del meta["format"]  # as written before the format was versioned
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checkpoint format 0; this lstm_jax reads format 1"):
        lstm_jax.load_run(other)
    meta_file.write_text('{"history": [')  # cut off mid-write
    with pytest.raises(CheckpointError, match="half-written or corrupt: metadata cannot be read"):
        lstm_jax.load_run(other)


# ------------------------------------------------------------------ any Flax module


def _stacked():
    return lnn.Sequential(
        [lnn.Bidirectional(lnn.LSTM(8, return_sequences=True)), lnn.GRU(8), lnn.Dense(10)]
    )


class TwoLayers(nn.Module):
    """A model of the user's own, importable from this test module."""

    units: int = 8

    @nn.compact
    def __call__(self, x):
        h = lnn.SimpleRNN(self.units, return_sequences=True)(x)
        return nn.Dense(10)(jnp.mean(h, axis=1))


@pytest.mark.slow
@pytest.mark.parametrize("make", [_stacked, TwoLayers], ids=["Sequential", "own module"])
def test_trainer_takes_any_flax_module_and_the_run_loads_and_resumes(tmp_path, make):
    result = run_fake(tmp_path, model=make(), epochs=1)
    assert result["model"] == (
        "Bidirectional(LSTM(8)) -> GRU(8) -> Dense(10)" if make is _stacked else "TwoLayers"
    )
    run = lstm_jax.load_run(tmp_path / "run")
    assert run.model == make()
    images = _fake_images().images[:16]
    expected = run.model.apply({"params": params_of(result)}, data.to_sequences(images))
    np.testing.assert_array_equal(run.predict(images), np.argmax(expected, -1))

    config = training.resume_config(tmp_path / "run", epochs=2)  # the model is the run's own
    with tfds.testing.mock_data(num_examples=512):
        resumed = training.train_and_evaluate(config, tmp_path / "run", print_fn=lambda s: None)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert jax.tree.structure(params_of(resumed)) == jax.tree.structure(params_of(result))
    assert (tmp_path / "run" / "curves.png").exists()


@pytest.mark.slow
def test_a_model_whose_class_cannot_be_imported_is_passed_to_load_run(tmp_path):
    run_fake(tmp_path, model=TwoLayers(), epochs=1)
    meta_file = tmp_path / "run" / "checkpoints" / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["model"]["class"] = "__main__.TwoLayers"  # as when defined in a notebook
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"__main__.TwoLayers, which cannot be imported here"):
        lstm_jax.load_run(tmp_path / "run")
    run = lstm_jax.load_run(tmp_path / "run", model=TwoLayers())
    assert run.predict(_fake_images().images[:4]).shape == (4,)


class _Probabilities(nn.Module):
    """A model of one's own ending in a softmax."""

    @nn.compact
    def __call__(self, x):
        return jax.nn.softmax(nn.Dense(10)(lnn.LSTM(8)(x)))


class _Votes(nn.Module):
    """Integer outputs: which logits are positive."""

    @nn.compact
    def __call__(self, x):
        return (nn.Dense(10)(lnn.LSTM(8)(x)) > 0).astype(jnp.int32)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, message",
    [
        (lnn.Sequential([lnn.LSTM(8), lnn.Dense(7)]), r"logits \[batch, 10\] .* gives \[2, 7\]"),
        (
            lnn.Sequential([lnn.LSTM(8, return_sequences=True), lnn.Dense(10)]),
            r"gives \[2, 28, 10\]",
        ),
        (
            lnn.Sequential([lnn.LSTM(8), lnn.Dense(10, activation="softmax")]),
            r"Dense\(activation='softmax'\), must return logits",
        ),
        (nn.Dense(10), None),  # maps [2, 28, 28] to [2, 28, 10]
        (lnn.LSTM(8, return_state=True), r"gives tuple"),
        (_Probabilities(), r"_Probabilities returns probabilities \(each row in \[0, 1\]"),
        (_Votes(), r"must return float logits; _Votes gives int32 \[batch, 10\]"),
    ],
    ids=["classes", "sequences", "softmax", "flax Dense", "tuple", "own softmax", "ints"],
)
def test_trainer_refuses_a_model_that_does_not_give_logits(tmp_path, model, message):
    with pytest.raises(training.ConfigError, match=message or r"logits \[batch, 10\]"):
        run_fake(tmp_path, model=model, epochs=1)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_given_model_is_not_described_by_settings_it_does_not_use(tmp_path):
    """With ``model=``, the settings that build the default ``Classifier`` are refused
    unless left at their defaults, and metrics.json records them as not used (null); the
    ``Classifier`` those settings describe records them."""
    model = lnn.Classifier(units=(8,))
    with pytest.raises(
        training.ConfigError,
        match=r"^cell gru; units 64; dropout 0\.5; precision bfloat16: these settings build",
    ):
        run_fake(tmp_path, model=model, cell="gru", units=(64,), dropout=0.5, precision="bfloat16")
    assert not (tmp_path / "run").exists()
    run_fake(tmp_path / "given", model=model, epochs=1)
    recorded = json.loads((tmp_path / "given" / "run" / "metrics.json").read_text())
    assert recorded["model"] == "LSTM(8) -> Dense(10)"
    assert {k: recorded["config"][k] for k in training.MODEL_SETTINGS} == dict.fromkeys(
        training.MODEL_SETTINGS
    )
    described = lnn.Classifier(cell="gru", units=(8,))  # the one Config(cell="gru", units=8) builds
    run_fake(tmp_path / "same", model=described, cell="gru", units=(8,), epochs=1)
    recorded = json.loads((tmp_path / "same" / "run" / "metrics.json").read_text())
    assert (recorded["config"]["cell"], recorded["config"]["units"]) == ("gru", [8])


# ------------------------------------------------------------ resume and evaluate


@pytest.mark.slow
def test_resume_reads_the_settings_from_the_run(tmp_path):
    common = ("--no-progress", "--cpu-devices", "1", "--data-dir", tmp_path / "tfds")
    out = _train_py(
        *("--cell", "gru", "--units", "8,6", "--bidirectional", "--batch-size", "32"),
        *("--validation-split", "0.25", "--epochs", "1", "--workdir", tmp_path / "run", *common),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    out = _train_py("--workdir", tmp_path / "run", "--resume", "--epochs", "2", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from the checkpoint of epoch 1" in out.stdout
    assert "epoch 2/2" in out.stdout and "epoch 1/2" not in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "Bidirectional(GRU(8)) -> Bidirectional(GRU(6)) -> Dense(10)"
    assert metrics["config"]["batch_size"] == 32 and metrics["config"]["validation_split"] == 0.25
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]

    out = _train_py("--workdir", tmp_path / "run", "--evaluate", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"test accuracy: {metrics['test_accuracy']:.2%} (loss" in out.stdout
    assert "checkpoint of epoch 2" in out.stdout

    out = _train_py("--workdir", tmp_path / "run", "--resume", "--units", "8", "--seed", "3")
    assert out.returncode == 2
    assert out.stderr.startswith("error: --units 8 (the run's: 8,6); --seed 3 (the run's: 0): ")
    assert "keeps the settings it was started with; only --epochs, --learning-rate, " in out.stderr
    assert (
        "--data-dir, --no-download, --no-progress, --tensorboard, --distributed may" in out.stderr
    )
    out = _train_py("--workdir", tmp_path / "run", "--evaluate", "--cell", "lstm")
    assert out.returncode == 2 and "drop --cell" in out.stderr


@pytest.mark.slow
def test_resume_in_a_workdir_without_a_run_trains_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="no run in"):
        run_fake(tmp_path, resume=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resume_config_allows_only_resumable_changes(fake_run):
    workdir, _ = fake_run
    config = training.resume_config(workdir, epochs=5, learning_rate=1e-4, progress=True)
    assert config.resume and config.epochs == 5 and config.learning_rate == 1e-4
    assert config.units == (8,) and config.batch_size == FAKE["batch_size"]
    with pytest.raises(training.ConfigError, match=r"^optimizer sgd \(the run's: adam\)"):
        training.resume_config(workdir, optimizer="sgd")
    with pytest.raises(training.ConfigError, match="^epochs must be a positive int"):
        training.resume_config(workdir, epochs=0)


@pytest.mark.slow
@pytest.mark.parametrize("error", [RuntimeError("Unable to initialize backend"), AssertionError()])
def test_any_failure_to_start_the_devices_is_a_device_error(monkeypatch, fake_run, error):
    def fail():
        raise error

    monkeypatch.setattr(jax, "devices", fail)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    for start in (training.devices, lambda: lstm_jax.load_run(fake_run[0])):
        with pytest.raises(training.DeviceError, match=r"devices: .+\. JAX_PLATFORMS='cuda' asks"):
            start()


@pytest.mark.slow
def test_predict_refuses_slips_saying_what_to_do(fake_run):
    run = lstm_jax.load_run(fake_run[0])
    images = _fake_images().images[:8, ..., 0]  # uint8 [8, 28, 28]
    with pytest.raises(ValueError, match=r"float sequences must be in \[0, 1\], as the run's data"):
        run.predict(images.astype(np.float32))  # [0, 255] as float: a common slip
    with pytest.raises(ValueError, match=r"inputs hold NaN or infinite values"):
        run.predict(np.full((1, 28, 28), np.nan, np.float32))
    for one, what in [
        (images[0], "one image [28, 28]"),
        (images[0][..., None], "one image [28, 28, 1]"),
        (images[0] / 255.0, "one sequence [28, 28]"),
    ]:
        with pytest.raises(ValueError, match=rf"expected a batch; got {re.escape(what)}: add a"):
            run.predict(one)
    np.testing.assert_array_equal(run.predict(images[0][None]), run.predict(images)[:1])
    for batch_size in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match=r"batch_size must be a positive int; got "):
            run.predict(images, batch_size=batch_size)


@pytest.mark.slow
def test_load_run_takes_the_newest_checkpoint_left_when_the_one_read_is_removed(
    tmp_path, monkeypatch
):
    """A run that is still training removes its older checkpoints (it keeps three), maybe
    while ``load_run`` reads one: as the listing is taken, or as orbax restores."""
    run_fake(tmp_path, units=(8,), epochs=3)
    restore, listed = ocp.CheckpointManager.restore, rundir.finished_epochs

    def removed_once_restored(self, step, *args, **kwargs):
        shutil.rmtree(self.directory / str(step))
        monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
        return restore(self, step, *args, **kwargs)

    def removed_once_listed(directory):
        epochs = listed(directory)
        shutil.rmtree(pathlib.Path(directory) / str(epochs[-1]))
        monkeypatch.setattr(rundir, "finished_epochs", listed)
        return epochs

    def replaced_by_a_newer_one(self, step, *args, **kwargs):
        os.rename(self.directory / str(step), self.directory / str(step + 10))
        return restore(self, step, *args, **kwargs)

    for name, patch in [
        ("restored", (ocp.CheckpointManager, "restore", removed_once_restored)),
        ("listed", (rundir, "finished_epochs", removed_once_listed)),
        ("always", (ocp.CheckpointManager, "restore", replaced_by_a_newer_one)),
    ]:
        shutil.copytree(tmp_path / "run", tmp_path / name)
        monkeypatch.setattr(*patch)
        if name == "always":
            with pytest.raises(CheckpointError, match=r"removed while read, 5 times: the run in"):
                lstm_jax.load_run(tmp_path / name)
        else:
            assert lstm_jax.load_run(tmp_path / name).epoch == 2


def _read_only(path: pathlib.Path) -> list[str]:
    """A command prefix that runs a command with ``path`` read-only: as root (whom file
    modes do not stop), a read-only bind mount in a mount namespace of its own; else the
    files' modes."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return []
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("root here cannot make a mount namespace (unshare) for a read-only run")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, str(path)]


@pytest.mark.slow
def test_evaluate_reads_a_run_it_cannot_write(fake_run, tmp_path):
    workdir = tmp_path / "read-only"
    shutil.copytree(fake_run[0], workdir)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    out = subprocess.run(
        [*_read_only(workdir), sys.executable, SCRIPTS / "train_on_fake_data.py"]
        + ["--workdir", workdir, "--evaluate", "--data-dir", tmp_path / "tfds"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for p in [workdir, *workdir.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy: " in out.stdout and "WARNING" not in out.stderr, out.stderr
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
