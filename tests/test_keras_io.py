"""from_keras and to_keras: Keras 3 models (JAX backend) in and out, outputs equal within
1e-5 for every supported layer, with masks and return_sequences; unsupported options refused.
"""

import os
import pathlib
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax
from lstm_jax import data, forward
from lstm_jax import linen as lnn
from lstm_jax.keras_io import UnsupportedError

assert os.environ["KERAS_BACKEND"] == "jax"  # set in conftest.py before this import
keras = pytest.importorskip("keras")

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_ABS_DIFF = 1e-5
B, T, D, U = 4, 9, 5, 6


@pytest.fixture(autouse=True)
def _keras_rank_promotion():
    """Keras's own code relies on implicit rank promotion (see test_keras.py)."""
    with jax.numpy_rank_promotion("allow"):
        yield


def _inputs():
    """``[B, T, D]`` with padded steps (all zeros) that a ``Masking`` layer masks."""
    x = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
    x[0, 5:] = 0  # padded at the end
    x[1, :3] = 0  # at the start
    x[2, 4] = 0  # a gap
    return x


def _randomise(model):
    """Keras's initial weights plus noise, so that biases are not zero."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        weights = layer.get_weights()
        layer.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in weights])
    return model


def _sequential(*layers):
    return _randomise(keras.Sequential([keras.Input((None, D)), *layers]))


def _check_round_trip(keras_model, record_largest, x=None):
    x = _inputs() if x is None else x
    expected = np.asarray(keras_model(x))
    module, variables = lstm_jax.from_keras(keras_model)
    got = np.asarray(module.apply(variables, jnp.asarray(x)))
    assert got.shape == expected.shape
    back = lstm_jax.to_keras(module, variables)
    again = np.asarray(back(x))
    for what in (got, again):
        diff = float(np.max(np.abs(what - expected)))
        record_largest("abs difference, Keras models in and out", diff)
        assert diff < MAX_ABS_DIFF
    return module, variables


CELLS = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "masking"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
def test_recurrent_layers_round_trip(cell, return_sequences, masked, go_backwards, record_largest):
    layer = getattr(keras.layers, cell)(
        U, return_sequences=return_sequences, go_backwards=go_backwards
    )
    model = _sequential(*([keras.layers.Masking()] if masked else []), layer)
    module, _ = _check_round_trip(model, record_largest)
    assert isinstance(module.layers[-1], lnn.LAYERS[CELLS[cell]])


@pytest.mark.parametrize(
    "cell, merge_mode",
    [("LSTM", m) for m in ("concat", "sum", "mul", "ave")] + [("GRU", "ave"), ("SimpleRNN", "mul")],
)
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
def test_bidirectional_round_trips_with_a_mask(cell, merge_mode, return_sequences, record_largest):
    inner = getattr(keras.layers, cell)(U, return_sequences=return_sequences)
    model = _sequential(
        keras.layers.Masking(), keras.layers.Bidirectional(inner, merge_mode=merge_mode)
    )
    _check_round_trip(model, record_largest)


@pytest.mark.slow
def test_dense_round_trips_with_every_activation_on_sequences_and_last_outputs(record_largest):
    activations = sorted(forward.ACTIVATIONS)
    dense = [
        keras.layers.Dense(7, activation=a, use_bias=n % 2 == 0) for n, a in enumerate(activations)
    ]
    model = _sequential(
        keras.layers.Masking(),
        keras.layers.LSTM(U, return_sequences=True),
        *dense,  # on [B, T, 7], the mask carried through
        keras.layers.GRU(U),
        keras.layers.Dense(3, activation="softmax", use_bias=False),
    )
    module, _ = _check_round_trip(model, record_largest)
    assert [m.activation for m in module.layers[2:-2]] == [
        None if a == "linear" else a for a in activations
    ]


@pytest.mark.slow
def test_functional_chain_and_the_mask_argument(record_largest):
    inputs = keras.Input((None, D))
    h = keras.layers.Bidirectional(keras.layers.LSTM(U, return_sequences=True))(inputs)
    h = keras.layers.SimpleRNN(U, return_sequences=True)(h)
    h = keras.layers.GRU(U)(h)
    model = _randomise(keras.Model(inputs, keras.layers.Dense(4)(h)))
    module, variables = _check_round_trip(model, record_largest)

    x = np.random.default_rng(2).normal(size=(B, T, D)).astype(np.float32)
    mask = np.ones((B, T), bool)
    mask[0, 6:] = mask[1, :2] = False
    with warnings.catch_warnings():  # Keras warns that the model object drops the mask,
        warnings.simplefilter("ignore", UserWarning)  # while its layers still use it
        expected = np.asarray(model(x, mask=mask))
    assert np.max(np.abs(expected - np.asarray(model(x)))) > 1e-3  # the mask matters
    got = module.apply(variables, jnp.asarray(x), mask=jnp.asarray(mask))
    assert float(np.max(np.abs(np.asarray(got) - expected))) < MAX_ABS_DIFF


@pytest.mark.parametrize("mask_value", [0.0, 1.5])
def test_a_functional_model_with_masking_converts(mask_value, record_largest):
    """Keras 3.15 records a functional model's mask as operations (NotEqual, Any) between
    its layers; they are Masking's own, which the Sequential computes from the layer."""
    x = _inputs()
    x[x == 0] = mask_value
    inputs = keras.Input((None, D))
    h = keras.layers.Masking(mask_value)(inputs)
    h = keras.layers.LSTM(U, return_sequences=True)(h)
    h = keras.layers.GRU(U)(h)
    model = _randomise(keras.Model(inputs, keras.layers.Dense(4)(h)))
    module, _ = _check_round_trip(model, record_largest, x=x)
    assert [type(m).__name__ for m in module.layers] == ["Masking", "LSTM", "GRU", "Dense"]
    assert module.layers[0].mask_value == mask_value


def test_operations_between_functional_layers_are_refused_naming_them():
    inputs = keras.Input((None, D))
    h = keras.layers.LSTM(U)(keras.ops.multiply(inputs, 2.0))
    model = keras.Model(inputs, keras.layers.Dense(4)(h))
    with pytest.raises(UnsupportedError, match=r"the operation 'multiply' \(Multiply\) between"):
        lstm_jax.from_keras(model)


@pytest.mark.slow
def test_the_lessons_classifier_goes_to_keras():
    model = lnn.Classifier(cell="gru", units=(8, 6), bidirectional=True)
    x = jnp.asarray(_inputs())
    variables = model.init(jax.random.key(0), x)
    keras_model = lstm_jax.to_keras(model, variables)
    assert keras_model.count_params() == lstm_jax.count_params(variables)
    diff = np.max(np.abs(np.asarray(keras_model(np.asarray(x))) - model.apply(variables, x)))
    assert diff < MAX_ABS_DIFF


def _refused(*layers):
    return keras.Sequential([keras.Input((T, D), batch_size=B), *layers])


@pytest.mark.parametrize(
    "model, message",
    [
        (lambda: _refused(keras.layers.LSTM(U, stateful=True)), "stateful=True"),
        (lambda: _refused(keras.layers.SimpleRNN(U, activation="relu")), "activation='relu'"),
        (
            lambda: _refused(keras.layers.LSTM(U, recurrent_activation="hard_sigmoid")),
            "recurrent_activation='hard_sigmoid'",
        ),
        (lambda: _refused(keras.layers.GRU(U, reset_after=False)), "reset_after=False"),
        (lambda: _refused(keras.layers.LSTM(U, use_bias=False)), "use_bias=False"),
        (lambda: _refused(keras.layers.LSTM(U, return_state=True)), "return_state=True"),
        (lambda: _refused(keras.layers.LSTM(U, kernel_regularizer="l2")), "kernel_regularizer"),
        (
            lambda: _refused(keras.layers.Bidirectional(keras.layers.LSTM(U, use_bias=False))),
            "'forward_lstm.*' \\(LSTM\\): use_bias=False",
        ),
        (lambda: _refused(keras.layers.Dense(3, activation="hard_silu")), "activation='hard_silu'"),
        (lambda: _refused(keras.layers.LSTM(U), keras.layers.Dropout(0.5)), "\\(Dropout\\) is not"),
        (lambda: _refused(keras.layers.Conv1D(3, 2)), "\\(Conv1D\\) is not supported"),
        (
            lambda: _refused(keras.layers.Dense(3, dtype="mixed_float16")),
            "dtype policy 'mixed_float16'",
        ),
        (
            lambda: _refused(keras.layers.Bidirectional(keras.layers.LSTM(U), dtype="float16")),
            "\\(Bidirectional\\): dtype policy 'float16'",
        ),
        (
            lambda: _refused(keras.layers.Masking(dtype="mixed_float16"), keras.layers.LSTM(U)),
            "\\(Masking\\): dtype policy 'mixed_float16'",
        ),
    ],
    ids=[
        "stateful",
        "activation",
        "recurrent_activation",
        "reset_after",
        "use_bias",
        "return_state",
        "regularizer",
        "inside Bidirectional",
        "Dense activation",
        "Dropout layer",
        "Conv1D layer",
        "dtype policy",
        "Bidirectional's dtype policy",
        "Masking's dtype policy",
    ],
)
def test_unsupported_options_are_refused_naming_layer_and_option(model, message):
    with pytest.raises(UnsupportedError, match=message):
        lstm_jax.from_keras(model())


def test_models_without_weights_are_refused_saying_why():
    unbuilt = keras.Sequential([keras.layers.LSTM(8), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="is not built, so it has no weights yet: start it wi"):
        lstm_jax.from_keras(unbuilt)
    with pytest.raises(ValueError, match="has no layers to convert"):
        lstm_jax.from_keras(keras.Sequential())


@pytest.mark.slow
@pytest.mark.parametrize("bidirectional", [False, True], ids=["LSTM", "Bidirectional"])
def test_bfloat16_models_go_to_keras_as_mixed_bfloat16_and_back(bidirectional):
    """A ``dtype=bfloat16`` model (float32 parameters, bfloat16 compute: ``train.py
    --precision bfloat16``) is Keras's ``mixed_bfloat16`` policy, both ways."""
    model = lnn.Classifier(
        units=(6, 5), num_classes=3, dtype=jnp.bfloat16, bidirectional=bidirectional
    )
    x = jnp.asarray(_inputs())
    variables = model.init(jax.random.key(0), x)
    ours = np.asarray(model.apply(variables, x), np.float32)
    keras_model = lstm_jax.to_keras(model, variables)
    assert {layer.dtype_policy.name for layer in keras_model.layers} == {"mixed_bfloat16"}
    theirs = np.asarray(keras_model(np.asarray(x)), np.float32)
    assert np.max(np.abs(theirs - ours)) < 1e-2  # bfloat16 resolves about 4e-3
    module, back = lstm_jax.from_keras(keras_model)
    inner = [m.layer if bidirectional else m for m in module.layers[:-1]]
    assert {m.dtype for m in [*inner, module.layers[-1]]} == {jnp.bfloat16}
    np.testing.assert_array_equal(np.asarray(module.apply(back, x), np.float32), ours)


def test_branching_functional_models_are_refused():
    inputs = keras.Input((None, D))
    a = keras.layers.LSTM(U)(inputs)
    b = keras.layers.GRU(U)(inputs)
    model = keras.Model(inputs, keras.layers.Add()([a, b]))
    with pytest.raises(
        UnsupportedError,
        match=r"'gru.*' takes \['input_layer.*'\] as input, not only the layer before",
    ):
        lstm_jax.from_keras(model)


def test_to_keras_refuses_other_modules():
    import flax.linen as nn

    with pytest.raises(UnsupportedError, match="to_keras converts .* got Dense"):
        lstm_jax.to_keras(nn.Dense(3), {"params": {"kernel": np.zeros((2, 3))}})


@pytest.mark.slow
def test_importing_lstm_jax_does_not_import_keras():
    code = (
        "import sys, lstm_jax; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow
def test_the_lessons_keras_file_gives_the_same_test_accuracy_in_jax(tmp_path, report):
    """The lesson's Keras script (one epoch here) saves a .keras file; from_keras on the
    loaded model classifies MNIST's test set as Keras does."""
    path = tmp_path / "lesson.keras"
    out = subprocess.run(
        [sys.executable, "examples/keras_lesson.py", "--epochs", "1", "--out", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    keras_accuracy = float(out.stdout.split("test accuracy: ")[1].split("%")[0]) / 100

    module, variables = lstm_jax.from_keras(keras.models.load_model(path))
    mnist = data.load("mnist")
    x = data.to_sequences(mnist.test.images, "rows")
    probs = jax.jit(module.apply)(variables, x)
    accuracy = float(np.mean(np.argmax(probs, -1) == mnist.test.labels))
    keras_probs = keras.models.load_model(path).predict(np.asarray(x), batch_size=1024, verbose=0)
    agree = int(np.sum(np.argmax(probs, -1) == np.argmax(keras_probs, -1)))
    report(
        f"lesson's .keras file, 1 epoch: test accuracy {keras_accuracy:.2%} in Keras, "
        f"{accuracy:.2%} through from_keras; {agree}/{len(x)} predictions agree"
    )
    assert abs(accuracy - keras_accuracy) < 1.5e-4  # Keras prints it rounded to 0.01%
    assert agree == len(x)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
def test_a_keras_language_model_comes_in_and_goes_out(cell, record_largest):
    """Keras's character model (``Embedding``, a recurrent layer returning sequences, a
    ``Dense`` at every step) as a ``Sequential`` of ours, and our ``LanguageModel`` out."""
    ids = np.random.default_rng(1).integers(0, 11, (B, T)).astype(np.int32)
    keras_model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(11, 4),
            getattr(keras.layers, cell)(U, return_sequences=True),
            keras.layers.Dense(11),
        ]
    )
    module, variables = lstm_jax.from_keras(keras_model)
    got = module.apply(variables, jnp.asarray(ids))
    diff = float(np.max(np.abs(np.asarray(got) - np.asarray(keras_model(ids)))))
    record_largest("abs difference against Keras 3 (language model in)", diff)
    assert got.shape == (B, T, 11) and diff < MAX_ABS_DIFF
    lm = lnn.LanguageModel(11, embed=4, cell=cell.lower().replace("rnn", "_rnn"), units=(U,))
    lm_variables = lm.init(jax.random.key(2), jnp.asarray(ids))
    out = lstm_jax.to_keras(lm, lm_variables)
    diff = float(np.max(np.abs(np.asarray(out(ids)) - np.asarray(lm.apply(lm_variables, ids)))))
    record_largest("abs difference against Keras 3 (language model out)", diff)
    assert diff < MAX_ABS_DIFF
