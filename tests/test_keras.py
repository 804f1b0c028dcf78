"""Our Flax layers against Keras 3 layers (JAX backend) given the same weights."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import linen as lnn
from lstm_jax import params as lparams
from lstm_jax.training import tasks

assert os.environ["KERAS_BACKEND"] == "jax"  # set in conftest.py before this import
keras = pytest.importorskip("keras")  # a test dependency: pip install -e ".[test]"
assert keras.backend.backend() == "jax", keras.backend.backend()


@pytest.fixture(autouse=True)
def _keras_rank_promotion():
    """Keras's own code (its orthogonal initialiser) relies on implicit rank promotion;
    our code is held to "raise" in every other test module."""
    with jax.numpy_rank_promotion("allow"):
        yield


MAX_ABS_DIFF = 1e-5
B, T, D, U = 4, 11, 5, 7

LAYERS = {
    "lstm": (lnn.LSTM, keras.layers.LSTM),
    "gru": (lnn.GRU, keras.layers.GRU),
    "simple_rnn": (lnn.SimpleRNN, keras.layers.SimpleRNN),
}


def _inputs_and_mask():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = np.ones((B, T), bool)
    mask[0, 3:6] = False
    mask[1, :5] = False
    mask[2, 8:] = False
    mask[3, :] = False
    return x, mask


def _keras_weights(layer):
    """Keras-initialised weights with a random bias, so that every term is exercised."""
    kernel, recurrent_kernel, bias = layer.get_weights()
    bias = np.random.default_rng(1).normal(0, 0.5, bias.shape).astype(np.float32)
    layer.set_weights([kernel, recurrent_kernel, bias])
    return {"kernel": kernel, "recurrent_kernel": recurrent_kernel, "bias": bias}


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
def test_layer_matches_keras(name, go_backwards, masked, return_sequences, record_largest):
    ours_cls, keras_cls = LAYERS[name]
    x, mask = _inputs_and_mask()
    kwargs = dict(return_sequences=return_sequences, return_state=True, go_backwards=go_backwards)
    keras_layer = keras_cls(U, **kwargs)
    keras_layer.build((B, T, D))
    weights = _keras_weights(keras_layer)
    expected = keras_layer(x, mask=mask if masked else None)

    ours = ours_cls(U, **kwargs)
    got = ours.apply(
        {"params": weights}, jnp.asarray(x), mask=jnp.asarray(mask) if masked else None
    )
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == tuple(e.shape)
        diff = float(np.max(np.abs(np.asarray(g) - np.asarray(e))))
        record_largest("abs difference against Keras 3", diff)
        assert diff < MAX_ABS_DIFF


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_initial_state_matches_keras(name):
    ours_cls, keras_cls = LAYERS[name]
    x, mask = _inputs_and_mask()
    rng = np.random.default_rng(2)
    n_states = 2 if name == "lstm" else 1
    states = [rng.normal(0, 0.5, (B, U)).astype(np.float32) for _ in range(n_states)]
    keras_layer = keras_cls(U, return_sequences=True)
    keras_layer.build((B, T, D))
    weights = _keras_weights(keras_layer)
    expected = keras_layer(x, mask=mask, initial_state=states)
    got = ours_cls(U, return_sequences=True).apply(
        {"params": weights},
        jnp.asarray(x),
        mask=jnp.asarray(mask),
        initial_state=states if name == "lstm" else states[0],
    )
    assert float(np.max(np.abs(np.asarray(got) - np.asarray(expected)))) < MAX_ABS_DIFF


@pytest.mark.slow
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
def test_bidirectional_matches_keras(merge_mode, return_sequences, record_largest):
    x, _ = _inputs_and_mask()
    keras_layer = keras.layers.Bidirectional(
        keras.layers.LSTM(U, return_sequences=return_sequences), merge_mode=merge_mode
    )
    keras_layer.build((B, T, D))
    fwd = _keras_weights(keras_layer.forward_layer)
    bwd = _keras_weights(keras_layer.backward_layer)
    expected = keras_layer(x)
    ours = lnn.Bidirectional(lnn.LSTM(U, return_sequences=return_sequences), merge_mode=merge_mode)
    got = ours.apply({"params": {"forward": fwd, "backward": bwd}}, jnp.asarray(x))
    assert got.shape == tuple(expected.shape)
    diff = float(np.max(np.abs(np.asarray(got) - np.asarray(expected))))
    record_largest("abs difference against Keras 3", diff)
    assert diff < MAX_ABS_DIFF


@pytest.mark.slow
def test_lesson_model_matches_keras_and_counts_the_same():
    """LSTM(50) then Dense(10): same logits given the same weights, same parameter count."""
    x = np.random.default_rng(3).random((8, 28, 28)).astype(np.float32)
    model = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.LSTM(50), keras.layers.Dense(10, activation="softmax")]
    )
    lstm_w, dense_w = model.layers[0].get_weights(), model.layers[1].get_weights()
    variables = {
        "params": {
            "LSTM_0": dict(zip(["kernel", "recurrent_kernel", "bias"], lstm_w, strict=True)),
            "Dense_0": dict(zip(["kernel", "bias"], dense_w, strict=True)),
        }
    }
    logits = lnn.Classifier().apply(variables, jnp.asarray(x))
    probs = jax.nn.softmax(logits)
    assert float(np.max(np.abs(np.asarray(probs) - np.asarray(model(x))))) < MAX_ABS_DIFF
    assert model.count_params() == lparams.count_params(variables) == 16_310


def test_training_loss_matches_keras():
    """The loss ``train.py`` minimises is Keras's sparse categorical cross-entropy from
    logits, summed over the examples a batch weights (padding has weight 0); so is its
    gradient."""
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(0, 3, (16, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    weights = jnp.asarray(np.arange(16) < 13, jnp.float32)

    def ours(logits):
        return tasks.classify_sums(logits, labels, weights)[0]

    def keras_loss(logits):
        losses = keras.ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return jnp.sum(losses * weights)

    np.testing.assert_allclose(ours(logits), keras_loss(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(keras_loss)(logits), atol=1e-7)
    _, correct, count = tasks.classify_sums(logits, labels, weights)
    assert count == 13
    assert correct == np.sum((np.argmax(logits, -1) == labels) * weights)


@pytest.mark.parametrize(
    "name, input_dim, units",
    [
        ("lstm", 1, 10),
        ("lstm", 28, 50),
        ("gru", 28, 50),
        ("simple_rnn", 28, 50),
        ("gru", 3, 1),
        ("simple_rnn", 1, 10),
        ("lstm", 7, 33),
    ],
)
def test_param_count_matches_keras(name, input_dim, units):
    layer = LAYERS[name][1](units)
    layer.build((None, 5, input_dim))
    formula = {
        "lstm": lparams.lstm_param_count,
        "gru": lparams.gru_param_count,
        "simple_rnn": lparams.simple_rnn_param_count,
    }[name]
    assert layer.count_params() == formula(input_dim, units)
