"""Parameter totals: closed forms against real parameter trees, the lesson's figures, summary."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import lstm_jax
from lstm_jax import linen as lnn

# The lesson's figures.
LSTM10_ON_1_PARAMS = 480
LSTM50_ON_28_PARAMS = 15_800
LSTM_SEQ_MNIST_PARAMS = 16_310  # LSTM(50) on 28 features, then Dense(10)

FORMULAS = {
    "lstm": (lstm_jax.lstm_param_count, lstm_jax.init_lstm, lnn.LSTM),
    "gru": (lstm_jax.gru_param_count, lstm_jax.init_gru, lnn.GRU),
    "simple_rnn": (lstm_jax.simple_rnn_param_count, lstm_jax.init_simple_rnn, lnn.SimpleRNN),
}
SHAPES = [(1, 1), (1, 10), (28, 50), (3, 7), (100, 2), (64, 128), (784, 1)]


def test_lesson_figures_from_the_formula():
    d, u = 28, 50
    assert LSTM_SEQ_MNIST_PARAMS == 4 * d * u + 4 * u * u + 4 * u + (u * 10 + 10)
    assert lstm_jax.lstm_param_count(1, 10) == LSTM10_ON_1_PARAMS
    assert lstm_jax.lstm_param_count(28, 50) == LSTM50_ON_28_PARAMS
    assert lstm_jax.lstm_param_count(28, 50) + 50 * 10 + 10 == LSTM_SEQ_MNIST_PARAMS


@pytest.mark.parametrize("name", list(FORMULAS), ids=list(FORMULAS))
@pytest.mark.parametrize("input_dim, units", SHAPES, ids=[f"{d}x{u}" for d, u in SHAPES])
def test_formula_matches_parameter_trees(name, input_dim, units):
    formula, init, layer = FORMULAS[name]
    abstract = jax.eval_shape(lambda k: init(k, input_dim, units), jax.random.key(0))
    assert lstm_jax.count_params(abstract) == formula(input_dim, units)
    variables = jax.eval_shape(
        layer(units).init, jax.random.key(0), jax.ShapeDtypeStruct((2, 5, input_dim), np.float32)
    )
    assert lstm_jax.count_params(variables) == formula(input_dim, units)


def test_count_does_not_depend_on_time_steps():
    counts = {
        t: lstm_jax.count_params(
            jax.eval_shape(
                lnn.LSTM(10).init, jax.random.key(0), jax.ShapeDtypeStruct((1, t, 1), np.float32)
            )
        )
        for t in (1, 5, 28, 784)
    }
    assert set(counts.values()) == {LSTM10_ON_1_PARAMS}


def _summary_lines(capsys, model, shape):
    total = lstm_jax.summary(model, shape)
    return total, capsys.readouterr().out


def test_summary_prints_the_lesson_figures(capsys):
    total, out = _summary_lines(capsys, lnn.LSTM(10), (None, 5, 1))
    assert total == LSTM10_ON_1_PARAMS
    assert "(None, 10)" in out and "Total params: 480 (1.88 KB)" in out

    total, out = _summary_lines(capsys, lnn.LSTM(50), (None, 28, 28))
    assert total == LSTM50_ON_28_PARAMS and "Total params: 15,800" in out

    total, out = _summary_lines(capsys, lnn.Classifier(), (None, 28, 28))
    assert total == LSTM_SEQ_MNIST_PARAMS
    rows = [line.split() for line in out.splitlines()]
    assert ["LSTM_0", "(LSTM)", "(None,", "50)", "15,800"] in rows
    assert ["Dense_0", "(Dense)", "(None,", "10)", "510"] in rows
    assert "Total params: 16,310 (63.71 KB)" in out  # 16,310 float32 = 65,240 bytes

    # The same model written as a flax Sequential.
    total, out = _summary_lines(capsys, nn.Sequential([lnn.LSTM(50), nn.Dense(10)]), (None, 28, 28))
    assert total == LSTM_SEQ_MNIST_PARAMS and "layers_0 (LSTM)" in out


def test_summary_shows_sequences_and_bidirectional(capsys):
    model = nn.Sequential([lnn.Bidirectional(lnn.GRU(8, return_sequences=True)), lnn.SimpleRNN(4)])
    total, out = _summary_lines(capsys, model, (32, 28, 28))
    assert "(32, 28, 16)" in out and "(32, 4)" in out
    assert total == 2 * lstm_jax.gru_param_count(28, 8) + lstm_jax.simple_rnn_param_count(16, 4)


def test_summary_allocates_nothing(capsys):
    """A model of 160 GB would not fit in memory: only shapes are traced."""
    total, out = _summary_lines(capsys, lnn.LSTM(100_000), (None, 3, 100_000))
    assert total == lstm_jax.lstm_param_count(100_000, 100_000)
    assert "GB" in out


def test_summary_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batch dimension may be None"):
        lstm_jax.summary(lnn.LSTM(4), (None, None, 3))
    with pytest.raises(ValueError, match="positive ints"):
        lstm_jax.summary(lnn.LSTM(4), (None, 0, 3))
