"""The training controls (gradient clipping, learning rate schedules, early stopping,
TensorBoard) and any Flax module (collections, random streams, a scan over a carry of its
own, given weights): each does what it should, and a run resumed from a checkpoint continues
exactly where the unbroken run went."""

import json
import shutil

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import lstm_jax
from lstm_jax import linen as lnn
from lstm_jax import training
from lstm_jax.training import early_stopping, optim
from tests.fakes import params_of, run_fake


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["cosine", "warmup_cosine"])
def test_the_learning_rate_follows_optax_s_schedule(tmp_path, schedule):
    result = run_fake(tmp_path, lr_schedule=schedule, epochs=3)
    steps = 512 * 4 // 5 // 64 + (512 * 4 // 5 % 64 > 0)  # 410 training examples
    lr = optim.learning_rate_schedule(training.Config(epochs=3, lr_schedule=schedule), steps)
    recorded = [h["learning_rate"] for h in result["history"]]
    np.testing.assert_allclose(recorded, [float(lr(e * steps - 1)) for e in (1, 2, 3)], 1e-6)
    firsts = [h["learning_rate_first_step"] for h in result["history"]]
    np.testing.assert_allclose(firsts, [float(lr(e * steps)) for e in (0, 1, 2)], 1e-6)
    if schedule == "warmup_cosine":
        assert float(lr(0)) == 0.0 and float(lr(steps)) == pytest.approx(1e-3)


def _interrupted_after(workdir, epoch: int, copy):
    """``copy``: the run in ``workdir`` as it was when epoch ``epoch`` ended."""
    shutil.copytree(workdir, copy)
    for path in (copy / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > epoch:
            shutil.rmtree(path)
    (copy / "metrics.json").unlink()


@pytest.mark.slow
@pytest.mark.parametrize(
    "controls",
    [
        dict(lr_schedule="cosine", clipnorm=0.5, dropout=0.2, recurrent_dropout=0.2),
        dict(lr_schedule="reduce_on_plateau", early_stopping=1, learning_rate=0.05),
        dict(lr_schedule="warmup_cosine", early_stopping=3),
    ],
    ids=["cosine, clipnorm, dropout", "plateau, early stopping", "warmup"],
)
def test_a_resumed_run_continues_its_controls_where_they_stopped(tmp_path, controls):
    whole = run_fake(tmp_path / "whole", epochs=4, **controls)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    _interrupted_after(tmp_path / "whole" / "run", 2, resumed_dir / "run")
    config = training.resume_config(resumed_dir / "run", progress=False)
    with tfds.testing.mock_data(num_examples=512):
        resumed = training.train_and_evaluate(config, resumed_dir / "run", print_fn=lambda s: None)
    keys = ("epoch", "train_loss", "val_loss", "learning_rate")
    assert [[h[k] for k in keys] for h in resumed["history"]] == [
        [h[k] for k in keys] for h in whole["history"]
    ]
    for a, b in zip(
        jax.tree.leaves(params_of(whole)), jax.tree.leaves(params_of(resumed)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert resumed.get("early_stopping") == whole.get("early_stopping")


@pytest.mark.slow
def test_early_stopping_stops_and_keeps_the_best_epoch_s_weights(tmp_path):
    # A learning rate far too high: the validation loss soon stops improving.
    result = run_fake(tmp_path, epochs=8, early_stopping=1, learning_rate=0.3)
    summary = result["early_stopping"]
    best = summary["best_epoch"]
    assert summary["stopped_after_epoch"] == best + 1 == len(result["history"]) < 8
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["early_stopping"]["best_epoch"] == best
    run = lstm_jax.load_run(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=512):
        val = run.evaluate("validation", data_dir=str(tmp_path / "tfds"))
    assert val["loss"] == pytest.approx(summary["best_val_loss"], rel=1e-5)
    assert early_stopping.stopped(training.Config(early_stopping=1), result["history"])


@pytest.mark.slow
def test_tensorboard_scalars_are_the_history(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    result = run_fake(tmp_path, tensorboard=True)
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["tensors"] or events.Tags()["scalars"]
    assert {"loss/train", "loss/validation", "accuracy/validation", "learning_rate"} <= set(tags)

    def values(tag):
        if events.Tags()["tensors"]:
            return [float(jax.numpy.asarray(_tensor(e))) for e in events.Tensors(tag)]
        return [e.value for e in events.Scalars(tag)]

    expected = [h["val_loss"] for h in result["history"]]
    np.testing.assert_allclose(values("loss/validation"), expected, rtol=1e-6)


def _tensor(event):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(event.tensor_proto)


class _Norm(fnn.Module):
    """LSTM, then BatchNorm (batch_stats), noise from its own stream, and a Dense head."""

    @fnn.compact
    def __call__(self, x, train: bool = False):
        h = lnn.LSTM(16)(x)
        h = fnn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
        if train:
            h = h + 0.01 * jax.random.normal(self.make_rng("noise"), h.shape)
        return fnn.Dense(10)(h)


class _FlaxRNN(fnn.Module):
    """Flax's own ``nn.RNN(nn.OptimizedLSTMCell(16))``, its last output to a Dense head."""

    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(10)(fnn.RNN(fnn.OptimizedLSTMCell(16))(x)[:, -1])


class _Elman(fnn.Module):
    """A hand-written Elman loop, scanning over a carry it makes itself."""

    @fnn.compact
    def __call__(self, x):
        cell = fnn.Dense(16)
        carry = jnp.zeros((x.shape[0], 16))

        def step(h, x_t):
            h = jnp.tanh(cell(jnp.concatenate([x_t, h], -1)))
            return h, h

        h, _ = fnn.scan(
            lambda mdl, h, x_t: step(h, x_t),
            variable_broadcast="params",
            split_rngs={"params": False},
        )(self, carry, jnp.swapaxes(x, 0, 1))
        return fnn.Dense(10)(h)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        lambda: _FlaxRNN(),
        lambda: _Elman(),
        lambda: _Norm(),
    ],
    ids=["flax nn.RNN", "Elman scan", "BatchNorm and noise"],
)
def test_any_flax_module_trains_saves_and_loads(tmp_path, model):
    result = run_fake(tmp_path, model=model(), epochs=2)
    assert np.isfinite([h["train_loss"] for h in result["history"]]).all()
    run = lstm_jax.load_run(tmp_path / "run", model=model())
    with tfds.testing.mock_data(num_examples=512):
        test = run.evaluate("test", data_dir=str(tmp_path / "tfds"))
    assert test["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)
    if isinstance(run.model, _Norm):
        stats = run.model_state["batch_stats"]
        assert not np.allclose(jax.tree.leaves(stats)[0], 0)  # trained, saved, restored
        state = result["state"].model_state["batch_stats"]
        jax.tree.map(np.testing.assert_array_equal, stats, jax.device_get(state))


@pytest.mark.slow
def test_training_starts_from_given_variables(tmp_path):
    model = lnn.Classifier(units=(16,))
    given = model.init(jax.random.key(7), jnp.zeros((1, 28, 28)))
    result = run_fake(tmp_path, model=model, epochs=1, learning_rate=1e-12, optimizer="sgd")
    assert not np.allclose(
        params_of(result)["Dense_0"]["kernel"], given["params"]["Dense_0"]["kernel"]
    )
    config = training.Config(
        units=(16,),
        batch_size=64,
        epochs=1,
        learning_rate=1e-12,
        optimizer="sgd",
        progress=False,
        data_dir=str(tmp_path / "tfds"),
    )
    with tfds.testing.mock_data(num_examples=512):
        started = training.train_and_evaluate(
            config, tmp_path / "given", model=model, variables=given, print_fn=lambda s: None
        )
        with pytest.raises(training.ConfigError, match="variables do not fit the model"):
            training.train_and_evaluate(
                config, tmp_path / "bad", variables={"params": {"x": jnp.ones(2)}}
            )
    assert not (tmp_path / "bad").exists()
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-9),
        params_of(started),
        jax.device_get(given["params"]),
    )


@pytest.mark.slow
def test_a_cosine_run_resumes_only_with_its_own_epochs(tmp_path, capsys):
    """A schedule planned over the run's epochs cannot be stretched by a resume (it would
    jump back up, or stay at 0): refused with a line, named as flags by train.py; each
    epoch records its first and last steps' rates, so that a jump would show."""
    import train

    first = run_fake(tmp_path, lr_schedule="cosine", epochs=1)
    record = first["history"][0]
    assert record["learning_rate_first_step"] == pytest.approx(1e-3)
    assert record["learning_rate"] < 1e-4  # the plan's last step, near 0
    with pytest.raises(training.ConfigError, match=r"^epochs 2 \(the run's: 1\): lr_schedule co"):
        training.resume_config(tmp_path / "run", epochs=2)
    args = ["--workdir", str(tmp_path / "run"), "--resume", "--epochs", "2"]
    with pytest.raises(SystemExit):
        train.main(args)
    line = capsys.readouterr().err
    assert line.startswith("error: --epochs 2 (the run's: 1): --lr-schedule cosine plans the")
    assert "Resume it with its 1 epochs, or start a new run for more." in line
    config = training.resume_config(tmp_path / "run", epochs=1, learning_rate=1e-4)
    assert config.learning_rate == 1e-4  # the same epochs: an interrupted run continues


@pytest.mark.slow
def test_a_resumed_run_that_stopped_early_says_it_trains_nothing(tmp_path):
    run_fake(tmp_path, epochs=8, early_stopping=1, learning_rate=0.3)
    config = training.resume_config(tmp_path / "run", epochs=12, progress=False)
    lines = []
    with tfds.testing.mock_data(num_examples=512):
        result = training.train_and_evaluate(config, tmp_path / "run", print_fn=lines.append)
    said = [line for line in lines if "nothing more to train" in line]
    assert len(said) == 1 and said[0].startswith("early stopping: val_loss has not improved")
    assert len(result["history"]) < 8
    config = training.resume_config(tmp_path / "run", epochs=len(result["history"]))
    lines = []
    with tfds.testing.mock_data(num_examples=512):
        training.train_and_evaluate(config, tmp_path / "run", print_fn=lines.append)
    assert any("nothing more to train" in line for line in lines)


class _InputNorm(fnn.Module):
    """BatchNorm of the first step's features (momentum 0: its statistics are the last
    batch's), then a Dense head."""

    @fnn.compact
    def __call__(self, x, train: bool = False):
        h = fnn.BatchNorm(use_running_average=not train, momentum=0.0)(x[:, 0])
        return fnn.Dense(2)(h)


@pytest.mark.slow
def test_batch_statistics_are_of_real_examples_only(tmp_path):
    """100 training examples in batches of 32: a model that keeps batch statistics trains on
    whole batches (the padding of a last batch, copies of example 0, entered them); the
    statistics kept are exactly those of the epoch's last whole batch."""
    from lstm_jax import data
    from lstm_jax.training import sharding

    rng = np.random.default_rng(0)
    x = rng.normal(size=(125, 3, 4)).astype(np.float32) + np.arange(4, dtype=np.float32)
    x[0] = 100.0  # example 0, which padding copied
    y = rng.integers(0, 2, 125)
    ds = data.from_arrays(x, y, x_test=x[:10], y_test=y[:10])
    config = training.Config(epochs=1, batch_size=32, seed=3, progress=False)
    lines = []
    result = training.train_and_evaluate(
        config, tmp_path / "run", model=_InputNorm(), data=ds, print_fn=lines.append
    )
    order = sharding.epoch_order(3, 1, 100)
    last_batch = ds.train.images[order[64:96], 0]
    mean = result["state"].model_state["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(mean, last_batch.mean(axis=0), atol=1e-5)
    assert result["train_examples_per_epoch"] == 96
    assert any(line.startswith("each epoch trains 96 of the 100 examples") for line in lines)
