"""The tasks' losses and metrics against float64 NumPy written from their definitions; the
data each task takes (``from_arrays``, text); a language model read in windows with its
state carried against read whole; generation's carried state against re-reading the text."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import data, sampling
from lstm_jax import linen as lnn
from lstm_jax.data import DataError, text
from lstm_jax.training import calls as calls_lib
from lstm_jax.training import sharding, steps, tasks
from lstm_jax.training.config import Config

RNG = np.random.default_rng(0)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _sums(task, *args):
    return np.asarray(tasks.TASKS[task].sums(*map(jnp.asarray, args[:3]), *args[3:]))


def test_classify_is_cross_entropy_and_accuracy_per_sequence():
    logits, labels = RNG.normal(size=(6, 5)), RNG.integers(0, 5, 6)
    weights = np.array([1, 1, 1, 1, 0, 0], np.float32)  # two padding rows
    got = _sums("classify", logits.astype(np.float32), labels, weights)
    nll = -_log_softmax(logits)[np.arange(6), labels]
    correct = logits.argmax(-1) == labels
    want = [(nll * weights).sum(), (correct * weights).sum(), 4]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("task", ["per_step", "next_token"])
def test_per_step_tasks_count_every_valid_step_once(task):
    b, t, c = 4, 7, 6
    logits, labels = RNG.normal(size=(b, t, c)), RNG.integers(0, c, (b, t))
    weights = np.array([1, 1, 1, 0], np.float32)
    lengths = np.array([7, 3, 1, 7])
    mask = np.arange(t)[None] < lengths[:, None]
    got = _sums(task, logits.astype(np.float32), labels, weights, jnp.asarray(mask))
    w = weights[:, None] * mask
    nll = -np.take_along_axis(_log_softmax(logits), labels[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == labels
    want = [(nll * w).sum(), (correct * w).sum(), 7 + 3 + 1]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_next_token_reports_bits_and_perplexity_of_its_loss():
    numbers = tasks.TASKS["next_token"].rates([2.0 * 10, 4.0, 10.0])
    assert numbers["loss"] == 2.0 and numbers["accuracy"] == 0.4
    assert numbers["bits"] == pytest.approx(2.0 / math.log(2))
    assert numbers["perplexity"] == pytest.approx(math.exp(2.0))


@pytest.mark.parametrize("shape", [(5,), (5, 8)], ids=["per_sequence", "per_step"])
@pytest.mark.parametrize("unit_axis", [False, True], ids=["values", "dense_1"])
def test_regress_is_squared_and_absolute_error_over_valid_values(shape, unit_axis):
    outputs, targets = RNG.normal(size=shape), RNG.normal(size=shape)
    weights = np.array([1, 1, 1, 1, 0], np.float32)
    mask = None
    w = weights.reshape((5,) + (1,) * (len(shape) - 1)) * np.ones(shape)
    if len(shape) == 2:
        lengths = np.array([8, 2, 5, 1, 8])
        mask = np.arange(8)[None] < lengths[:, None]
        w = w * mask
    given = outputs[..., None] if unit_axis else outputs
    got = _sums(
        "regress", given.astype(np.float32), targets.astype(np.float32), weights,
        None if mask is None else jnp.asarray(mask),
    )  # fmt: skip
    error = outputs - targets
    want = [(error**2 * w).sum(), (np.abs(error) * w).sum(), w.sum()]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert tasks.TASKS["regress"].rates(want)["mae"] == pytest.approx(want[1] / want[2])


# --------------------------------------------------------------------------------------
# The data of each task
# --------------------------------------------------------------------------------------


def _arrays(y_train, y_test, x=None, **kw):
    x = RNG.normal(size=(len(y_train), 6, 2)).astype(np.float32) if x is None else x
    x_test = x[: len(y_test)]
    return data.from_arrays(x, y_train, x_test=x_test, y_test=y_test, **kw)


def test_from_arrays_infers_the_task_from_the_targets():
    n = 20
    assert _arrays(RNG.integers(0, 3, n), RNG.integers(0, 3, 5)).task == "classify"
    per_step = _arrays(RNG.integers(0, 3, (n, 6)), RNG.integers(0, 3, (5, 6)))
    assert per_step.task == "per_step" and per_step.num_classes == 3
    regress = _arrays(RNG.normal(size=n), RNG.normal(size=5))
    assert regress.task == "regress" and regress.num_classes == 1
    assert regress.train.labels.dtype == np.float32
    ids = RNG.integers(0, 9, (n, 6))
    lm = data.from_arrays(
        ids, np.roll(ids, -1, 1), x_test=ids[:5], y_test=ids[:5], task="next_token"
    )
    assert lm.task == "next_token" and lm.input_vocab == 9 and lm.num_classes == 9


@pytest.mark.parametrize(
    "targets, task, message",
    [
        (np.zeros(20, np.float32), "classify", "float targets are values: task regress"),
        (np.zeros(20, np.int32), "per_step", "one at every step ([20, 6])"),
        (np.zeros((20, 6), np.int32), "regress", "integer labels are classes"),
        (np.zeros((20, 5), np.int32), "per_step", "[20, 6]"),
        (np.zeros(20, np.int32), "next_token", "next_token reads token ids"),
        (np.zeros(20, np.int32), "translate", "task must be one of"),
    ],
)
def test_targets_that_do_not_fit_the_task_are_one_clear_error(targets, task, message):
    with pytest.raises(DataError, match=re.escape(message)):
        _arrays(targets, targets[:5], task=task)


def test_a_text_is_windows_of_its_characters_and_the_next_ones():
    ds = data.from_text("abcab" * 40, bptt=10, validation_split=0.2)
    assert ds.vocabulary == "abc" and ds.task == "next_token" and ds.num_classes == 3
    assert ds.train.images.shape == (15, 10)  # 160 characters: 15 whole windows and 9 more
    first = text.decode(ds.train.images[0], ds.vocabulary)
    assert first == "abcababcab"
    assert text.decode(ds.train.labels[0], ds.vocabulary) == "bcababcaba"
    # Window i + 1 starts where window i ends: a stream of windows is the text.
    joined = text.decode(ds.train.images[:3].reshape(-1), ds.vocabulary)
    assert joined == ("abcab" * 40)[:30]
    assert len(ds.validation) == 1 and len(ds.test) == 1


def test_a_held_out_character_the_training_text_lacks_is_read_as_unknown():
    ds = data.from_text("ab" * 100 + "zz" * 10, bptt=5, validation_split=0.1)
    assert ds.vocabulary == "ab" + text.UNKNOWN
    assert (ds.validation.images == 2).any() or (ds.test.images == 2).any()
    with pytest.raises(DataError, match="lacks: 'z'"):
        text.encode("z", "ab", what="the prompt")


def test_a_text_too_short_for_a_window_is_refused():
    with pytest.raises(DataError, match="window of 100"):
        data.from_text("too short", bptt=100)


# --------------------------------------------------------------------------------------
# The state carried
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_a_text_read_in_windows_with_the_state_carried_is_the_text_read_whole(cell):
    model = lnn.LanguageModel(11, embed=5, cell=cell, units=(8, 6))
    ids = jnp.asarray(RNG.integers(0, 11, (3, 24)))
    variables = model.init(jax.random.key(0), ids)
    whole = model.apply(variables, ids)
    state, parts = None, []
    for start in range(0, 24, 5):  # windows of 5, the last of 4
        logits, state = model.apply(
            variables, ids[:, start : start + 5], initial_state=state, return_state=True
        )
        parts.append(logits)
    np.testing.assert_allclose(np.concatenate(parts, 1), whole, atol=1e-6)


def test_streams_are_contiguous_runs_of_windows_side_by_side():
    index, weight = sharding.stream_index(10, 3)  # 4 steps: streams 0-3, 4-7, 8-9
    assert index.T.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
    assert weight.T.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]


def test_evaluating_streams_gives_each_stream_read_whole():
    """The loss the trainer reports on a text read as streams, window by window with the
    state carried, is the loss of each stream read whole from a zero state."""
    ds = data.from_text("the cat sat on the mat. " * 30, bptt=7, validation_split=0.5)
    split, streams = ds.train, 4
    model = lnn.LanguageModel(ds.num_classes, embed=4, units=(6,))
    variables = steps.init_variables(model, (7,), seed=1)
    mesh = sharding.data_mesh(streams)
    config = Config(batch_size=streams, task="next_token")
    calls = calls_lib.calls_of(model)
    task = tasks.TASKS["next_token"]
    evaluator = steps.Evaluator(config, model, mesh, calls, task=task, streams=True)
    got = evaluator("train", split, variables["params"])
    index, weight = sharding.stream_index(len(split), streams)
    total, count = 0.0, 0
    for s in range(streams):
        rows = index[:, s][weight[:, s] > 0]
        ids = split.images[rows].reshape(1, -1)
        targets = split.labels[rows].reshape(-1)
        logp = _log_softmax(model.apply(variables, jnp.asarray(ids))[0])
        total -= logp[np.arange(len(targets)), targets].sum()
        count += len(targets)
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_each_generated_step_is_the_distribution_of_rereading_the_whole_text(cell):
    model = lnn.LanguageModel(13, embed=4, cell=cell, units=(8, 5))
    prompt = jnp.asarray(RNG.integers(0, 13, (2, 6)))
    variables = model.init(jax.random.key(3), prompt)
    sampler = sampling.Sampler(model, variables)
    new = sampler.generate(prompt, 5, temperature=1.0, seed=4)
    assert new.shape == (2, 5)
    # Step by step with the state carried, against the whole text read again each time.
    logits, state = sampler.read(prompt)
    seen = prompt
    for i in range(5):
        again = model.apply(variables, seen)[:, -1]
        np.testing.assert_allclose(
            jax.nn.softmax(logits), jax.nn.softmax(again), atol=1e-6, err_msg=f"step {i}"
        )
        logits, state = sampler.step(new[:, i], state)
        seen = jnp.concatenate([seen, new[:, i : i + 1]], axis=1)


def test_sampling_at_temperature_zero_is_the_likeliest_and_top_k_keeps_k():
    logits = jnp.asarray([[0.0, 3.0, 1.0, 2.0]])
    assert int(sampling.sample(logits, jax.random.key(0), 0, None)[0]) == 1
    draws = {
        int(sampling.sample(logits, jax.random.key(i), 5.0, 2)[0]) for i in range(200)
    }  # fmt: skip
    assert draws == {1, 3}
    for bad in (-1.0, float("nan"), "hot"):
        with pytest.raises(ValueError, match="temperature"):
            sampling.check_sampling(bad, None, 4)
    with pytest.raises(ValueError, match="top_k"):
        sampling.check_sampling(1.0, 0, 4)
