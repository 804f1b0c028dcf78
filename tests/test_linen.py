"""The Flax layers are thin: same numbers as the functional core, Keras's parameter names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax
from lstm_jax import linen as lnn

X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 4)), jnp.float32)


@pytest.mark.parametrize(
    "layer_cls, fn",
    [(lnn.LSTM, lstm_jax.lstm), (lnn.GRU, lstm_jax.gru), (lnn.SimpleRNN, lstm_jax.simple_rnn)],
    ids=["lstm", "gru", "simple_rnn"],
)
def test_layer_is_the_functional_core(layer_cls, fn):
    layer = layer_cls(5, return_sequences=True, go_backwards=True)
    variables = layer.init(jax.random.key(0), X)
    assert set(variables["params"]) == {"kernel", "recurrent_kernel", "bias"}
    expected = fn(variables["params"], X, return_sequences=True, go_backwards=True)
    np.testing.assert_array_equal(layer.apply(variables, X), expected)


def test_lstm_layer_initialises_like_keras():
    params = lnn.LSTM(5).init(jax.random.key(0), X)["params"]
    np.testing.assert_array_equal(params["bias"][5:10], np.ones(5))  # unit_forget_bias
    r = np.asarray(params["recurrent_kernel"], np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(5), atol=1e-5)


def test_bidirectional_halves_and_merge_none():
    layer = lnn.Bidirectional(lnn.GRU(5, return_sequences=True), merge_mode=None)
    variables = layer.init(jax.random.key(0), X)
    fwd, bwd = layer.apply(variables, X)
    p = variables["params"]
    np.testing.assert_array_equal(fwd, lstm_jax.gru(p["forward"], X, return_sequences=True))
    reversed_outputs = lstm_jax.gru(p["backward"], X, return_sequences=True, go_backwards=True)
    np.testing.assert_array_equal(bwd, reversed_outputs[:, ::-1])  # back in time order


def test_bidirectional_rejects_unknown_merge_mode():
    with pytest.raises(ValueError, match="merge_mode must be one of"):
        lnn.Bidirectional(lnn.LSTM(5), merge_mode="max").init(jax.random.key(0), X)


@pytest.mark.slow
def test_classifier_stacks_and_computes_in_bfloat16():
    model = lnn.Classifier(cell="gru", units=(8, 6), bidirectional=True, dtype=jnp.bfloat16)
    variables = model.init(jax.random.key(0), X)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits = model.apply(variables, X)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    full = lnn.Classifier(cell="gru", units=(8, 6), bidirectional=True).apply(variables, X)
    np.testing.assert_allclose(logits, full, atol=0.1)


def test_classifier_rejects_unknown_cell():
    with pytest.raises(ValueError, match="cell must be one of"):
        lnn.Classifier(cell="transformer").init(jax.random.key(0), X)


def test_layer_rejects_rank_2_inputs():
    with pytest.raises(ValueError, match=r"rank 3, \[batch, time, features\]"):
        lnn.LSTM(5).init(jax.random.key(0), X[0])
