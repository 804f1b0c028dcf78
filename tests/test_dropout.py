"""Dropout as Keras 3 has it: masks drawn once per sequence (one per gate with recurrent
dropout), kept units scaled by 1 / (1 - rate), off in inference; checked against Keras's own
layers through probes that show each mask in the outputs, against a float64 NumPy reference
given the same masks, and through ``from_keras`` / ``to_keras`` and the trainer."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import lstm_jax
from lstm_jax import keras_io, recurrent, training
from lstm_jax import linen as lnn
from tests.fakes import run_fake

B, T, D, U = 4000, 6, 3, 3
RATE = 0.3


def _kept_fraction_agrees(ours: np.ndarray, theirs: np.ndarray, rate: float) -> None:
    """Both kept fractions within 4 standard errors of 1 - rate, and of each other."""
    p = 1 - rate
    for kept in (ours, theirs):
        assert abs(kept.mean() - p) < 4 * np.sqrt(p * (1 - p) / kept.size)
    assert abs(ours.mean() - theirs.mean()) < 4 * np.sqrt(2 * p * (1 - p) / ours.size)


def _simple_rnn_probe(keras_layer_kwargs, kernel, recurrent_kernel):
    """A SimpleRNN whose outputs show its dropout mask, in Keras (training=True) and ours."""
    x = np.full((B, T, D), 0.5, np.float32)
    h0 = np.full((B, U), 0.5, np.float32)
    params = {"kernel": kernel, "recurrent_kernel": recurrent_kernel, "bias": np.zeros(U)}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    layer = keras.layers.SimpleRNN(U, return_sequences=True, **keras_layer_kwargs)
    with jax.numpy_rank_promotion("allow"):
        layer.build((B, T, D))
        layer.set_weights([params["kernel"], params["recurrent_kernel"], params["bias"]])
        theirs = np.asarray(layer(x, initial_state=[h0], training=True))
    ours = recurrent.simple_rnn(
        params,
        jnp.asarray(x),
        return_sequences=True,
        initial_state=jnp.asarray(h0),
        key=jax.random.key(0),
        **keras_layer_kwargs,
    )
    return np.asarray(ours), theirs


def test_input_dropout_masks_are_keras_s_one_per_sequence():
    # kernel I, recurrent 0: y_t = tanh(0.5 * m_x), so each output shows its input's mask.
    ours, theirs = _simple_rnn_probe({"dropout": RATE}, np.eye(D, U), np.zeros((U, U)))
    for out in (ours, theirs):
        assert (out == out[:, :1]).all()  # the same mask at every step
        kept = np.isclose(out, np.tanh(0.5 / (1 - RATE)), atol=1e-6)
        assert (kept | (out == 0)).all()  # kept and scaled by 1 / (1 - rate), or dropped
    _kept_fraction_agrees(ours[:, 0] != 0, theirs[:, 0] != 0, RATE)


def test_recurrent_dropout_masks_are_keras_s_one_per_sequence():
    # kernel 0, recurrent I, h0 = 0.5: h_t = tanh(m_h * h_{t-1}); a unit dropped at step 1
    # stays 0, and one kept stays non-zero, only if the mask is the same at every step.
    ours, theirs = _simple_rnn_probe({"recurrent_dropout": RATE}, np.zeros((D, U)), np.eye(U))
    for out in (ours, theirs):
        assert ((out != 0) == (out[:, :1] != 0)).all()
        np.testing.assert_allclose(out[:, 0][out[:, 0] != 0], np.tanh(0.5 / (1 - RATE)), 1e-6)
    _kept_fraction_agrees(ours[:, 0] != 0, theirs[:, 0] != 0, RATE)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("rates", [(0.3, 0.0), (0.3, 0.2)])
def test_mask_shapes_and_values_match_keras_s_cells(cell, rates):
    dropout, recurrent_dropout = rates
    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell](
        U, dropout=dropout, recurrent_dropout=recurrent_dropout
    )
    with jax.numpy_rank_promotion("allow"):
        layer.build((B, T, D))
        theirs = layer.cell.get_dropout_mask(jnp.ones((B, D)))
    ours, _ = recurrent.dropout_masks(
        recurrent.CELLS[cell], jax.random.key(1), (B, D, U), dropout, recurrent_dropout
    )
    theirs = np.stack(theirs) if isinstance(theirs, list) else np.asarray(theirs)
    assert ours.shape == theirs.shape  # per gate (implementation 1) with recurrent dropout
    for mask in (np.asarray(ours), theirs):
        np.testing.assert_allclose(np.unique(mask), [0.0, 1 / (1 - dropout)], rtol=1e-6)
    _kept_fraction_agrees(np.asarray(ours) != 0, theirs != 0, dropout)


def _reference(cell: str, params, x, masks):
    """Keras 3's equations with dropout masks, in float64 NumPy: one step at a time."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m_x, m_h = (None if m is None else np.asarray(m, np.float64) for m in masks)
    gates = recurrent.CELLS[cell].gates
    units = p["recurrent_kernel"].shape[0]

    def project(v, w, m):
        if m is None:
            return v @ w
        if m.ndim == 2:
            return (v * m) @ w
        return np.concatenate([(v * m[g]) @ np.split(w, gates, -1)[g] for g in range(gates)], -1)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    h, c = np.zeros((len(x), units)), np.zeros((len(x), units))
    for t in range(x.shape[1]):
        x_t = np.asarray(x[:, t], np.float64)
        if cell == "lstm":
            z = project(x_t, p["kernel"], m_x) + p["bias"] + project(h, p["recurrent_kernel"], m_h)
            i, f, g, o = np.split(z, 4, -1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            zx = project(x_t, p["kernel"], m_x) + p["bias"][0]
            zh = project(h, p["recurrent_kernel"], m_h) + p["bias"][1]
            z, r = (
                sigmoid(zx[:, :units] + zh[:, :units]),
                sigmoid(zx[:, units : 2 * units] + zh[:, units : 2 * units]),
            )
            h = z * h + (1 - z) * np.tanh(zx[:, 2 * units :] + r * zh[:, 2 * units :])
    return h


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("rates", [(0.3, 0.0), (0.0, 0.3), (0.2, 0.4)])
def test_dropout_equals_the_float64_reference_given_the_same_masks(cell, rates, record_largest):
    info = recurrent.CELLS[cell]
    params = info.init(jax.random.key(0), D, 5)
    x = jax.random.normal(jax.random.key(1), (16, T, D))
    key = jax.random.key(2)
    ours = recurrent.run_cell(
        info, params, x, dropout=rates[0], recurrent_dropout=rates[1], key=key
    )
    if cell == "lstm":  # lstm() takes its own paths (the input mask before the scan)
        np.testing.assert_allclose(
            recurrent.lstm(params, x, dropout=rates[0], recurrent_dropout=rates[1], key=key),
            ours,
            atol=1e-6,
        )
    masks = recurrent.dropout_masks(info, key, (16, D, 5), *rates)
    diff = np.abs(np.asarray(ours) - _reference(cell, params, x, masks)).max()
    record_largest("dropout against the float64 NumPy reference", diff)
    assert diff < 1e-5
    no_key = recurrent.run_cell(info, params, x, dropout=rates[0], recurrent_dropout=rates[1])
    np.testing.assert_array_equal(no_key, recurrent.run_cell(info, params, x))  # inference


@pytest.mark.slow
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
def test_a_keras_model_with_dropout_gives_keras_s_outputs_in_inference(cls, record_largest):
    layer = getattr(keras.layers, cls)
    x = np.random.default_rng(0).normal(size=(5, T, D)).astype(np.float32)
    with jax.numpy_rank_promotion("allow"):
        keras_model = keras.Sequential(
            [
                keras.Input((T, D)),
                layer(8, dropout=0.2, recurrent_dropout=0.3, return_sequences=True),
                layer(8, dropout=0.1),
                keras.layers.Dense(4),
            ]
        )
        expected = np.asarray(keras_model(x, training=False))
        module, variables = lstm_jax.from_keras(keras_model)
        back = lstm_jax.to_keras(module, variables)
    assert [(m.dropout, m.recurrent_dropout) for m in module.layers[:2]] == [(0.2, 0.3), (0.1, 0.0)]
    diff = np.abs(np.asarray(module.apply(variables, x)) - expected).max()
    record_largest("dropout models from Keras, in inference", diff)
    assert diff < 1e-5
    configs = [back.layers[i].get_config() for i in (0, 1)]
    assert [(c["dropout"], c["recurrent_dropout"]) for c in configs] == [(0.2, 0.3), (0.1, 0.0)]
    training_out = module.apply(
        variables, x, deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    assert np.abs(np.asarray(training_out) - expected).max() > 1e-3  # dropout in training


@pytest.mark.slow
def test_the_trainer_draws_fresh_masks_each_step_and_evaluates_without(tmp_path):
    result = run_fake(tmp_path, dropout=0.3, recurrent_dropout=0.3, epochs=1)
    model = lnn.Classifier(units=(16,), dropout=0.3, recurrent_dropout=0.3)
    variables = {"params": result["state"].params}
    x = jnp.ones((4, 28, 28))
    assert (model.apply(variables, x) == model.apply(variables, x)).all()  # inference
    from lstm_jax.training import calls

    outs = [
        model.apply(variables, x, deterministic=False, rngs=calls.step_rngs(0, step))
        for step in (0, 1)
    ]
    assert not np.allclose(outs[0], outs[1])  # each step its own masks
    assert result["test_accuracy"] > 0  # trained and tested


@pytest.mark.slow
def test_a_model_with_flax_dropout_trains(tmp_path):
    model = lnn.Sequential(
        [lnn.LSTM(16, return_sequences=True), lnn.nn.Dropout(0.5), lnn.GRU(8), lnn.Dense(10)]
    )
    result = run_fake(tmp_path, model=model, epochs=1)
    assert np.isfinite(result["history"][0]["train_loss"])
    run = lstm_jax.load_run(tmp_path / "run")
    x = np.zeros((3, 28, 28, 1), np.uint8)
    assert (run.predict(x) == run.predict(x)).all()


def test_dropout_rates_are_checked():
    with pytest.raises(training.ConfigError, match="dropout must be at least 0 and below 1"):
        training.Config(dropout=1.0).validate()
    params = recurrent.init_lstm(jax.random.key(0), D, U)
    with pytest.raises(ValueError, match="recurrent_dropout must be at least 0 and below 1"):
        recurrent.lstm(params, jnp.ones((2, T, D)), recurrent_dropout=-0.1, key=jax.random.key(0))


@pytest.mark.slow
def test_nnx_layers_drop_out_in_training_and_not_after_eval():
    from flax import nnx

    from lstm_jax import nnx as lx

    model = lx.Sequential(
        [
            lx.LSTM(D, 8, dropout=0.3, recurrent_dropout=0.2, rngs=nnx.Rngs(0)),
            lx.Dense(8, 2, rngs=nnx.Rngs(1)),
        ]
    )
    x = jax.random.normal(jax.random.key(3), (5, T, D))
    linen = lx.to_linen(model)
    assert (linen.layers[0].dropout, linen.layers[0].recurrent_dropout) == (0.3, 0.2)
    inference = linen.apply(lx.to_linen_variables(model), x)
    model.eval()
    np.testing.assert_allclose(model(x), inference, atol=1e-6)
    np.testing.assert_array_equal(model(x), model(x))
    model.train()
    first, second = model(x), model(x)
    assert not np.allclose(first, inference, atol=1e-3)
    assert not np.allclose(first, second, atol=1e-3)  # fresh masks at each call


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_a_layer_is_refused_its_rate_when_built_not_when_trained(rate):
    with pytest.raises(ValueError, match="LSTM: dropout must be at least 0 and below 1"):
        lnn.LSTM(5, dropout=rate)
    with pytest.raises(ValueError, match="GRU: recurrent_dropout must be at least 0 and below 1"):
        lnn.Classifier(cell="gru", units=(5,), recurrent_dropout=rate).init(
            jax.random.key(0), jnp.ones((1, T, D))
        )
    from flax import nnx

    from lstm_jax import nnx as lx

    with pytest.raises(ValueError, match="SimpleRNN: dropout must be at least 0 and below 1"):
        lx.SimpleRNN(D, 5, dropout=rate, rngs=nnx.Rngs(0))


def test_keras_s_dropout_of_one_is_refused_when_converted():
    with jax.numpy_rank_promotion("allow"):
        keras_model = keras.Sequential([keras.Input((T, D)), keras.layers.LSTM(4, dropout=1.0)])
    with pytest.raises(keras_io.UnsupportedError, match=r"dropout=1\.0 \(lstm_jax: from 0"):
        lstm_jax.from_keras(keras_model)
