"""``lstm_jax.training.steps``: the loss and its sums, the model a config describes, and the
one evaluation, against NumPy."""

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
