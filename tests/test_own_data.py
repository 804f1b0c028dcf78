"""Your own sequences through the trainer: ``data.from_arrays``, lengths as masks in
training, evaluation and ``load_run(...).predict``, and what a run keeps of them."""

import json
import shutil

import numpy as np
import pytest

import lstm_jax
from lstm_jax import data, training
from lstm_jax import linen as lnn
from lstm_jax.data import DataError

T, F = 20, 2


def sign_task(n: int, seed: int, steps: int = T):
    """The sign of the sum of the first ``L`` values of feature 0, ``L`` from 1 to 20; the
    steps after ``L`` are noise, so only a model that stops at each length can be right."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, steps, F)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=n)
    valid = np.arange(steps)[None, :] < lengths[:, None]
    y = ((x[..., 0] * valid).sum(axis=1) > 0).astype(np.int32)
    return x, y, lengths


@pytest.fixture(scope="module")
def sign_run(tmp_path_factory):
    x, y, lengths = sign_task(6000, seed=0)
    x_test, y_test, lengths_test = sign_task(1000, seed=1)
    ds = data.from_arrays(
        x, y, x_test=x_test, y_test=y_test, lengths_train=lengths, lengths_test=lengths_test
    )
    config = training.Config(
        units=(32,), epochs=6, batch_size=64, learning_rate=3e-3, progress=False
    )
    workdir = tmp_path_factory.mktemp("sign") / "run"
    result = training.train_and_evaluate(config, workdir, data=ds, print_fn=lambda s: None)
    return ds, workdir, result


@pytest.mark.slow
def test_variable_length_sequences_train_well_above_chance(sign_run, report):
    ds, _, result = sign_run
    report(f"sign of the sum of the first L values (chance 50%): {result['test_accuracy']:.2%}")
    assert result["test_accuracy"] > 0.85
    assert result["data"] == {"train": 4800, "validation": 1200, "test": 1000}


@pytest.mark.slow
def test_padding_further_does_not_change_a_prediction(sign_run):
    ds, workdir, _ = sign_run
    run = lstm_jax.load_run(workdir)
    x, lengths = ds.test.images[:200], ds.test.lengths[:200]
    noise = np.random.default_rng(2).normal(size=(200, 15, F)).astype(np.float32)
    longer = np.concatenate([x, noise], axis=1)  # 35 steps, the same lengths
    np.testing.assert_allclose(
        run.logits(longer, lengths=lengths), run.logits(x, lengths=lengths), atol=1e-5
    )
    assert (run.predict(longer, lengths=lengths) == run.predict(x, lengths=lengths)).all()
    # Read to the end (the lengths all 35), the padding changes predictions; without any
    # lengths, predict refuses rather than read the padding unasked.
    full = np.full(200, 35)
    assert (run.predict(longer, lengths=full) != run.predict(x, lengths=lengths)).any()
    with pytest.raises(ValueError, match="trained on sequences of given lengths.*the full 35"):
        run.predict(longer)


@pytest.mark.slow
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])
def test_predict_refuses_inputs_that_are_not_finite(sign_run, bad):
    ds, workdir, _ = sign_run
    run = lstm_jax.load_run(workdir)
    x = ds.test.images[:4].astype(np.float64)
    x[2, 3, 1] = bad
    with pytest.raises(ValueError, match="inputs hold NaN or infinite values"):
        run.predict(x, lengths=ds.test.lengths[:4])


@pytest.mark.slow
def test_a_run_records_the_datas_shape_not_the_data(sign_run):
    ds, workdir, result = sign_run
    meta_file = sorted((workdir / "checkpoints").glob("*/meta/metadata"))[-1]
    meta = json.loads(meta_file.read_text())
    assert meta["data"] == {
        "name": "arrays",
        "from_arrays": True,
        "train": [4800, T, F],
        "lengths": True,
        "task": "classify",
        "targets": [],  # one label per example
        "vocabulary": None,
    }
    total = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
    assert total < ds.train.images.nbytes  # the parameters, not the data
    run = lstm_jax.load_run(workdir)
    with pytest.raises(ValueError, match="trained on your own arrays"):
        run.evaluate("test")
    test = run.evaluate("test", data=ds)
    assert test["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_resuming_a_run_of_arrays_needs_them_and_continues_with_them(sign_run, tmp_path):
    ds, workdir, _ = sign_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    config = training.resume_config(copy, epochs=7)
    with pytest.raises(training.ConfigError, match="trained on your own arrays"):
        training.train_and_evaluate(config, copy, print_fn=lambda s: None)
    result = training.train_and_evaluate(config, copy, data=ds, print_fn=lambda s: None)
    assert [h["epoch"] for h in result["history"]] == list(range(1, 8))


@pytest.mark.slow
def test_a_model_that_takes_no_mask_is_refused_before_anything_is_written(tmp_path):
    x, y, lengths = sign_task(256, seed=0)
    ds = data.from_arrays(x, y, x_test=x, y_test=y, lengths_train=lengths, lengths_test=lengths)

    class NoMask(lnn.nn.Module):
        @lnn.nn.compact
        def __call__(self, x):
            return lnn.nn.Dense(2)(x[:, -1])

    config = training.Config(epochs=1, batch_size=64, progress=False)
    with pytest.raises(training.ConfigError, match="takes no mask|does not take"):
        training.train_and_evaluate(config, tmp_path / "run", model=NoMask(), data=ds)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_images_and_sequences_without_lengths_train(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(300, 8, 8), dtype=np.uint8)
    labels = (images[:, :4].mean(axis=(1, 2)) > images[:, 4:].mean(axis=(1, 2))).astype(int)
    ds = data.from_arrays(images, labels, x_test=images[:100], y_test=labels[:100])
    assert ds.train.images.shape == (240, 8, 8, 1) and ds.num_classes == 2
    config = training.Config(epochs=1, batch_size=60, units=(8,), progress=False)
    result = training.train_and_evaluate(config, tmp_path / "img", data=ds, print_fn=print)
    run = lstm_jax.load_run(tmp_path / "img")
    assert run.input_shape == (8, 8)  # each image read as rows
    assert (run.predict(images[:100]) >= 0).all()
    assert run.evaluate("test", data=ds)["accuracy"] == pytest.approx(result["test_accuracy"])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x_train=np.zeros((4, 3))), "x_train must be float sequences"),
        (dict(x_train=np.full((4, 3, 2), np.nan)), "NaN or infinite"),
        (dict(y_train=np.array([0, 1, -1, 0])), "y_train must be integer labels"),
        (dict(y_train=np.array([0.5, 1, 1, 0]), task="classify"), "float targets are values"),
        (dict(lengths_train=np.array([1, 2, 3, 4])), "lengths_train must be from 1 to 3"),
        (dict(lengths_train=np.array([1, 2, 3])), "one per sequence"),
        (dict(lengths_test=None), "go together"),
        (dict(x_test=np.zeros((4, 3, 5), np.float32)), "same features"),
        (dict(validation_split=1.0), "validation_split must be strictly between"),
        (dict(num_classes=1), r"num_classes must be an int above the largest label \(1\)"),
        (dict(num_classes=2.5), r"num_classes must be an int above .*; got 2\.5"),
        (dict(y_train=np.array([0, 1, 2**31, 0])), "must fit int32"),
        (dict(x_train=np.full((4, 3, 2), 1e39)), "beyond float32's range"),
        (dict(y_train=np.array([1, 1, 1, 1])), "y_train holds one class only"),
        (dict(validation_split=0.9), "leaves no example to train on"),
        (dict(validation_split=1e-17), "leaves no example held out"),
    ],
)
def test_from_arrays_says_what_it_expected(change, message):
    arrays = dict(
        x_train=np.zeros((4, 3, 2), np.float32),
        y_train=np.array([0, 1, 1, 0]),
        x_test=np.zeros((4, 3, 2), np.float32),
        y_test=np.array([0, 1, 1, 0]),
        lengths_train=np.array([1, 2, 3, 3]),
        lengths_test=np.array([3, 3, 3, 3]),
    )
    arrays.update(change)
    with pytest.raises(DataError, match=message):
        data.from_arrays(arrays.pop("x_train"), arrays.pop("y_train"), **arrays)


@pytest.mark.slow
def test_data_without_a_validation_or_test_example_is_refused(tmp_path):
    import dataclasses

    x, y, _ = sign_task(256, seed=0)
    ds = data.from_arrays(x, y, x_test=x, y_test=y)
    config = training.Config(epochs=1, batch_size=64, progress=False)
    for split in ("validation", "test"):
        empty = dataclasses.replace(ds, **{split: getattr(ds, split).head(0)})
        with pytest.raises(training.ConfigError, match=f"the {split} split of arrays is empty"):
            training.train_and_evaluate(config, tmp_path / "run", data=empty)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_model_whose_weights_depend_on_the_length_is_refused_for_longer_tests(tmp_path):
    """Test sequences of another length than the training set's (which ``from_arrays``
    takes) need a model that reads any length: one that does not is refused before any
    epoch, not after training (it left a checkpoint and no metrics.json)."""

    class Flat(lnn.nn.Module):
        @lnn.nn.compact
        def __call__(self, x):
            return lnn.nn.Dense(2)(x.reshape(x.shape[0], -1))  # weights [T * F, 2]

    x, y, _ = sign_task(256, seed=0)
    x_test, y_test, _ = sign_task(64, seed=1, steps=30)
    ds = data.from_arrays(x, y, x_test=x_test, y_test=y_test)
    config = training.Config(epochs=1, batch_size=64, progress=False)
    with pytest.raises(training.ConfigError, match=r"not the test set's \[batch, 30, 2\]"):
        training.train_and_evaluate(config, tmp_path / "run", model=Flat(), data=ds)
    assert not (tmp_path / "run").exists()
    result = training.train_and_evaluate(config, tmp_path / "lstm", data=ds, print_fn=print)
    assert result["data"]["test"] == 64  # a recurrent model reads the longer tests
