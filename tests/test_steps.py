"""``lstm_jax.training.steps``: the loss and its sums, the model a config describes, and the
one evaluation, against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import data, training
from lstm_jax import linen as lnn
from lstm_jax.training import calls as calls_lib
from lstm_jax.training import sharding, steps, tasks


def _softmax_xent(logits, labels):
    logits = logits.astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return logz - logits[np.arange(len(labels)), labels]


def test_the_sums_are_of_the_weighted_examples_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1])
    weights = np.array([1, 1, 1, 1, 0, 0], np.float32)
    loss_sum, correct, count = np.asarray(
        tasks.classify_sums(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    )
    want = _softmax_xent(logits, labels)[:4].sum()
    assert loss_sum == pytest.approx(want, rel=1e-6) and count == 4
    assert correct == (logits.argmax(-1) == labels)[:4].sum()
    assert steps.rates([loss_sum, correct, count]) == pytest.approx((want / 4, correct / 4))


def test_the_model_of_a_config_is_the_classifier_its_settings_describe():
    config = training.Config(cell="gru", units=(8, 4), bidirectional=True, dropout=0.25)
    model = steps.make_model(config, 7)
    assert model == lnn.Classifier(
        cell="gru", units=(8, 4), num_classes=7, bidirectional=True, dropout=0.25
    )
    assert steps.make_model(training.Config(precision="bfloat16"), 10).dtype == jnp.bfloat16


def test_a_model_s_calls_are_worked_out_from_its_signature_and_collections():
    calls = steps.model_calls(lnn.Classifier(units=(4,)), (5, 3))
    assert calls == calls_lib.Calls(switch="deterministic", collections=(), takes_mask=True)


def test_batch_statistics_train_on_whole_batches_only():
    assert steps.examples_per_epoch(1000, 128, calls_lib.Calls()) == 1000
    assert steps.examples_per_epoch(1000, 128, calls_lib.Calls(collections=("stats",))) == 896


@pytest.mark.slow
def test_the_evaluation_is_the_mean_loss_and_accuracy_of_the_model_s_logits():
    config = training.Config(units=(6,), batch_size=32)
    model = steps.make_model(config, 3)
    rng = np.random.default_rng(1)
    split = data.Split(rng.normal(size=(1100, 5, 2)).astype(np.float32), rng.integers(0, 3, 1100))
    variables = steps.init_variables(model, (5, 2), seed=2)
    mesh = sharding.data_mesh()
    evaluator = steps.Evaluator(config, model, mesh, steps.model_calls(model, (5, 2)))
    result = evaluator("test", split, variables["params"])
    logits = np.asarray(model.apply(variables, jnp.asarray(split.images)))
    assert result["examples"] == 1100 and result["split"] == "test"
    want = _softmax_xent(logits, split.labels).mean()
    assert result["loss"] == pytest.approx(want, rel=1e-5)
    assert result["accuracy"] == pytest.approx((logits.argmax(-1) == split.labels).mean())
    calls = steps.model_calls(model, (5, 2))
    rngs = calls_lib.eval_rngs(0)
    first = steps.eval_logits(model, calls, variables, split.images[:4], rngs=rngs)
    np.testing.assert_allclose(first, logits[:4], rtol=1e-5, atol=1e-6)


def _epoch(config, images, labels, *, bias=None):
    """``config``'s model trained for one epoch on ``images`` ``[N, 5, 2]`` in their order
    from its initial state (the output layer's bias set to ``bias``, if given): the state,
    the epoch's sums and ``bad_step``."""
    model = steps.make_model(config, 3)
    mesh = sharding.data_mesh(config.batch_size)
    state = steps.create_train_state(config, model, (5, 2))
    if bias is not None:
        params = {**state.params, "Dense_0": {**state.params["Dense_0"], "bias": bias}}
        state = state.replace(params=params)
    calls = steps.model_calls(model, (5, 2))
    train_epoch, _ = steps.make_epoch_fns(config, model, mesh, len(labels), calls=calls)
    split = data.Split(images, labels)
    batches = sharding.batches_on_mesh(split, np.arange(len(labels)), config.batch_size, mesh)
    state, sums, bad_step = train_epoch(state, batches)
    return jax.device_get(state), np.asarray(sums), int(bad_step)


def test_an_epoch_updates_nothing_from_its_first_step_whose_loss_is_not_finite():
    config = training.Config(units=(6,), batch_size=8)
    rng = np.random.default_rng(3)
    images = rng.normal(size=(32, 5, 2)).astype(np.float32)
    labels = rng.integers(0, 3, 32)
    images[2 * 8 + 3, 1, 0] = np.nan  # the third step's fourth example
    state, sums, bad_step = _epoch(config, images, labels)
    before, before_sums, none = _epoch(config, images[:16], labels[:16])
    assert bad_step == 2 and none == -1
    assert int(state.step) == int(before.step) == 2
    np.testing.assert_allclose(sums, before_sums, rtol=1e-6)
    for got, want in zip(
        jax.tree.leaves((state.params, state.opt_state)),
        jax.tree.leaves((before.params, before.opt_state)),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_an_update_that_overflows_stops_the_epoch_at_its_step():
    # Equal output biases of 3e38 leave the softmax uniform (the loss log 3, the gradients
    # small), and Adam's first update moves the label's bias up by the learning rate: past
    # float32's largest value.
    config = training.Config(units=(6,), batch_size=8, learning_rate=1e38)
    rng = np.random.default_rng(4)
    images = rng.normal(size=(16, 5, 2)).astype(np.float32)
    labels = np.zeros(16, np.int64)
    state, sums, bad_step = _epoch(config, images, labels, bias=jnp.full(3, 3e38))
    assert bad_step == 0 and sums[2] == 0
    assert np.isinf(state.params["Dense_0"]["bias"][0])


def test_all_finite_is_false_for_any_infinity_or_nan_and_never_overflows():
    big = np.full(1_000_000, 3.4e38, np.float32)  # finite, their sum is not
    assert bool(steps._all_finite({"a": big, "b": np.ones(3, jnp.bfloat16)}))
    for bad in (np.inf, -np.inf, np.nan):
        with_bad = big.copy()
        with_bad[12345] = bad
        assert not bool(steps._all_finite({"a": np.ones(3), "b": with_bad}))
    assert not bool(steps._all_finite([np.array([np.inf, -np.inf], np.float32)]))
