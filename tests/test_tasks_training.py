"""The tasks through the trainer: a label at every step that needs memory, forecasting values,
and a character language model of a text file (resumed, stopped early, TensorBoard, two
processes, generation), each against its baseline or its unbroken twin."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import lstm_jax
from lstm_jax import data, training
from tests.test_distributed import ROOT, _free_port

QUIET = dict(progress=False)


def _train(workdir, ds, **settings):
    config = training.Config(**{**QUIET, **settings})
    return training.train_and_evaluate(config, workdir, data=ds, print_fn=lambda s: None)


def running_parity(n: int, seed: int, steps: int = 12):
    """Bits in, and at every step the parity of the bits so far: each label needs all of the
    sequence before it, so a model without memory is at chance (50%)."""
    x = np.random.default_rng(seed).integers(0, 2, (n, steps, 1))
    return x.astype(np.float32), (np.cumsum(x[..., 0], axis=1) % 2).astype(np.int32)


@pytest.mark.slow
def test_a_label_at_every_step_that_needs_memory_is_learned(tmp_path, report):
    x, y = running_parity(4000, 0)
    x_test, y_test = running_parity(500, 1)
    ds = data.from_arrays(x, y, x_test=x_test, y_test=y_test)
    assert ds.task == "per_step"
    result = _train(tmp_path / "run", ds, units=(32,), epochs=8, batch_size=32, learning_rate=1e-2)
    report(f"running parity, every step (chance 50%): {result['test_accuracy']:.2%}")
    assert result["test_accuracy"] > 0.95
    run = lstm_jax.load_run(tmp_path / "run")
    assert run.task == "per_step"
    np.testing.assert_array_equal(
        run.predict(x_test[:50]), run.logits(x_test[:50]).argmax(-1)
    )  # fmt: skip
    assert run.predict(x_test[:50]).shape == (50, 12)
    assert run.evaluate(data=ds)["accuracy"] == pytest.approx(result["test_accuracy"])


def noisy_sines(n: int, seed: int, steps: int = 40, noise: float = 0.02):
    """Windows of a noisy mixture of two sines of random phase, and the value that follows
    each window."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps + 1)[None]
    phase = rng.uniform(0, 2 * np.pi, (n, 2))
    series = np.sin(0.3 * t + phase[:, :1]) + 0.5 * np.sin(0.7 * t + phase[:, 1:])
    series = series + noise * rng.normal(size=series.shape)
    return series[:, :-1, None].astype(np.float32), series[:, -1].astype(np.float32)


@pytest.mark.slow
def test_forecasting_beats_repeating_the_last_value_tenfold(tmp_path, report):
    x, y = noisy_sines(4000, 0)
    x_test, y_test = noisy_sines(500, 1)
    ds = data.from_arrays(x, y, x_test=x_test, y_test=y_test)
    assert ds.task == "regress"
    result = _train(tmp_path / "run", ds, units=(32,), epochs=10, batch_size=32, learning_rate=3e-3)
    last_value = float(np.mean((x_test[:, -1, 0] - y_test) ** 2))
    report(
        f"noisy sines, next value: mse {result['test_loss']:.5f} against {last_value:.5f} "
        f"repeating the last value ({result['test_loss'] / last_value:.3f}x), mae "
        f"{result['test_mae']:.4f}"
    )
    assert result["test_loss"] <= 0.1 * last_value
    run = lstm_jax.load_run(tmp_path / "run")
    assert run.task == "regress"
    predicted = run.logits(x_test)
    assert predicted.shape in ((500,), (500, 1))
    mse = float(np.mean((predicted.reshape(-1) - y_test) ** 2))
    assert mse == pytest.approx(result["test_loss"], rel=1e-4)


SHAKESPEARE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.
"""


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(SHAKESPEARE * 12, encoding="utf-8")
    return path


LM = dict(task="next_token", units=(16,), embed=8, batch_size=8, bptt=20, learning_rate=1e-2)


def _lm_config(text_file, **settings):
    return training.Config(**{**QUIET, **LM, "dataset": str(text_file), **settings})


@pytest.mark.slow
def test_a_language_model_run_resumes_bit_identically(tmp_path, text_file):
    whole = training.train_and_evaluate(
        _lm_config(text_file, epochs=3), tmp_path / "whole", print_fn=lambda s: None
    )
    assert whole["history"][-1]["val_loss"] < whole["history"][0]["val_loss"]
    assert {"test_bits", "test_perplexity", "test_accuracy"} <= set(whole)
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for path in (tmp_path / "resumed" / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > 1:
            shutil.rmtree(path)
    (tmp_path / "resumed" / "metrics.json").unlink()
    config = training.resume_config(tmp_path / "resumed", progress=False)
    resumed = training.train_and_evaluate(config, tmp_path / "resumed", print_fn=lambda s: None)
    assert [h["val_loss"] for h in resumed["history"]] == [h["val_loss"] for h in whole["history"]]
    for a, b in zip(
        jax.tree.leaves(jax.device_get(whole["state"].params)),
        jax.tree.leaves(jax.device_get(resumed["state"].params)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # The run writes as it was trained: the same text from the same seed, each time.
    run = lstm_jax.load_run(tmp_path / "resumed")
    assert run.vocabulary == "".join(sorted(set(SHAKESPEARE * 12)))
    text = run.generate("First", 40, temperature=0.5, seed=1)
    assert len(text) == 40 and set(text) <= set(run.vocabulary)
    assert text == lstm_jax.load_run(tmp_path / "whole").generate(
        "First", 40, temperature=0.5, seed=1
    )
    with pytest.raises(data.DataError, match="lacks"):
        run.generate("Zebra~", 5)


@pytest.mark.slow
def test_a_language_model_stops_early_and_writes_tensorboard(tmp_path, text_file):
    from tensorboard.backend.event_processing import event_accumulator

    config = _lm_config(text_file, epochs=30, early_stopping=1, learning_rate=0.3, tensorboard=True)
    result = training.train_and_evaluate(config, tmp_path / "run", print_fn=lambda s: None)
    summary = result["early_stopping"]
    assert summary["stopped_after_epoch"] == summary["best_epoch"] + 1 < 30
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["tensors"] or events.Tags()["scalars"])
    assert {"loss/validation", "bits/validation", "perplexity/validation"} <= tags
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["task"] == "next_token" and "val_bits" in metrics["history"][0]


def _train_py(*args, **popen):
    return subprocess.Popen(
        [sys.executable, "train.py", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **popen,
    )


def _flags(text_file):
    return (
        "--dataset", text_file, "--units", 16, "--embed", 8, "--batch-size", 8, "--bptt", 20,
        "--epochs", 2, "--no-progress",
    )  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_a_language_model_as_one_process_with_two_devices(
    tmp_path, text_file, record_largest
):
    one = _train_py(*_flags(text_file), "--cpu-devices", 2, "--workdir", tmp_path / "one")
    out, err = one.communicate(timeout=300)
    assert one.returncode == 0, err[-3000:]
    port = _free_port()
    hosts = ("--coordinator-address", f"127.0.0.1:{port}", "--num-processes", 2)
    started = [
        _train_py(
            *_flags(text_file),
            "--cpu-devices",
            1,
            "--workdir",
            tmp_path / "two",
            *hosts,
            "--process-id",
            i,
        )  # fmt: skip
        for i in (0, 1)
    ]
    for p in started:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    mine = jax.tree.leaves(jax.device_get(lstm_jax.load_run(tmp_path / "two").params))
    theirs = jax.tree.leaves(jax.device_get(lstm_jax.load_run(tmp_path / "one").params))
    largest = max(float(np.max(np.abs(a - b))) for a, b in zip(mine, theirs, strict=True))
    record_largest("abs difference, language model, 2 processes vs 1 process on 2 devices", largest)
    assert largest < 1e-5
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2


@pytest.mark.slow
def test_train_py_trains_a_language_model_and_generates_from_it(tmp_path, text_file):
    p = _train_py(*_flags(text_file), "--workdir", tmp_path / "run")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "windows of 20 characters" in out and "bits, perplexity" in out
    assert "test: test_loss" in out
    p = _train_py("--workdir", tmp_path / "run", "--generate", "First", "--length", 30)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert out.startswith("First") and len(out.rstrip("\n")) >= 35
    p = _train_py("--workdir", tmp_path / "run", "--evaluate")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "bits, perplexity" in out, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("targets", ["per_step", "three_values"])
def test_values_per_step_or_several_per_sequence_train_and_load(tmp_path, targets):
    x, _ = noisy_sines(600, 2)
    y = 2 * x[..., 0] if targets == "per_step" else x[:, -3:, 0] * [1.0, -1.0, 0.5]
    ds = data.from_arrays(x, y, x_test=x[:100], y_test=y[:100])
    result = _train(tmp_path / "run", ds, units=(8,), epochs=2, batch_size=32)
    run = lstm_jax.load_run(tmp_path / "run")
    predicted = run.logits(x[:100]).reshape(y[:100].shape)
    mse = float(np.mean((predicted - y[:100]) ** 2))
    assert mse == pytest.approx(result["test_loss"], rel=1e-4)
    assert result["test_mae"] == pytest.approx(
        float(np.mean(np.abs(predicted - y[:100]))), rel=1e-4
    )


@pytest.mark.slow
def test_random_windows_train_any_model_and_streams_need_one_that_carries_state(
    tmp_path, text_file
):
    from lstm_jax import linen as lnn

    vocab = len(set(SHAKESPEARE))
    model = lnn.Sequential(
        [lnn.Embedding(vocab, 8), lnn.LSTM(16, return_sequences=True), lnn.Dense(vocab)]
    )
    config = training.Config(
        **{**QUIET, **LM, "units": (50,), "embed": 64, "dataset": str(text_file), "epochs": 1}
    )
    with pytest.raises(training.ConfigError, match="windows streams carries the model's state"):
        training.train_and_evaluate(config, tmp_path / "streams", model=model)
    assert not (tmp_path / "streams").exists()
    random = dataclasses.replace(config, windows="random", epochs=2)
    result = training.train_and_evaluate(random, tmp_path / "random", model=model)
    assert result["history"][-1]["val_loss"] < result["history"][0]["train_loss"]
    assert result["config"]["windows"] == "random" and "test_bits" in result
