"""The Flax NNX layers (``lstm_jax.nnx``) against the linen layers (``lstm_jax.linen``) with the
same weights: outputs and gradients within 1e-6, every option; weights both ways."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lstm_jax
from lstm_jax import linen as lnn
from lstm_jax import nnx as lx
from tests import reference

B, T, D = 3, 6, 4
TOL = 1e-6
X = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, D)), jnp.float32)
MASK = jnp.arange(T)[None] < jnp.array([6, 2, 4])[:, None]
KINDS = {
    "lstm": (lnn.LSTM, lx.LSTM),
    "gru": (lnn.GRU, lx.GRU),
    "simple_rnn": (lnn.SimpleRNN, lx.SimpleRNN),
}


def _same(nnx_model, linen_model, x=X, **call):
    """Outputs and parameter gradients of both, the linen model given the NNX model's
    weights (``to_linen_variables``)."""
    variables = lx.to_linen_variables(nnx_model)

    def linen_loss(variables):
        out = linen_model.apply(variables, x, **call)
        return jnp.sum(jnp.sin(jnp.concatenate([jnp.ravel(o) for o in jax.tree.leaves(out)]))), out

    def nnx_loss(model):
        out = model(x, **call)
        return jnp.sum(jnp.sin(jnp.concatenate([jnp.ravel(o) for o in jax.tree.leaves(out)]))), out

    (_, want), want_grads = jax.value_and_grad(linen_loss, has_aux=True)(variables)
    (_, got), got_grads = nnx.value_and_grad(nnx_loss, has_aux=True)(nnx_model)
    reference.assert_trees_close(got, want, atol=TOL, rtol=TOL)
    got_grads = {"params": nnx.to_pure_dict(nnx.state(got_grads, nnx.Param))}
    reference.assert_trees_close(got_grads, want_grads, atol=TOL, rtol=TOL)


OPTIONS = [
    {},
    {"return_sequences": True},
    {"return_state": True},
    {"go_backwards": True, "return_sequences": True},
    {"return_sequences": True, "zero_output_for_mask": True},
    {"unroll": 3},
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_recurrent_layers_equal_the_linen_ones(kind, options, masked):
    linen_cls, nnx_cls = KINDS[kind]
    call = {"mask": MASK} if masked else {}
    _same(nnx_cls(D, 5, **options, rngs=nnx.Rngs(0)), linen_cls(5, **options), **call)


@pytest.mark.parametrize("kind", list(KINDS))
def test_initial_state_and_bfloat16_as_linen(kind):
    linen_cls, nnx_cls = KINDS[kind]
    layer = nnx_cls(D, 5, return_state=True, rngs=nnx.Rngs(1))
    state = tuple(jnp.full((B, 5), 0.3) for _ in range(2 if kind == "lstm" else 1))
    variables = lx.to_linen_variables(layer)
    want = linen_cls(5, return_state=True).apply(variables, X, initial_state=state)
    reference.assert_trees_close(layer(X, initial_state=state), want, atol=TOL)
    half = nnx_cls(D, 5, dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    got, want = half(X), linen_cls(5, dtype=jnp.bfloat16).apply(lx.to_linen_variables(half), X)
    assert got.dtype == jnp.bfloat16
    reference.assert_trees_close(got, want, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_equals_linen(merge_mode):
    _same(
        lx.Bidirectional(
            lx.LSTM(D, 5, return_sequences=True, rngs=nnx.Rngs(0)), merge_mode, rngs=nnx.Rngs(1)
        ),
        lnn.Bidirectional(lnn.LSTM(5, return_sequences=True), merge_mode),
        mask=MASK,
    )


@pytest.mark.slow
def test_sequential_with_masking_equals_linen():
    x = X.at[1, 3:].set(0.0)  # padded steps, for Masking
    model = lx.Sequential(
        [
            lx.Masking(),
            lx.Bidirectional(
                lx.GRU(D, 5, return_sequences=True, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1)
            ),
            lx.LSTM(10, 4, rngs=nnx.Rngs(2)),
            lx.Dense(4, 3, activation="tanh", rngs=nnx.Rngs(3)),
        ]
    )
    linen = lnn.Sequential(
        [
            lnn.Masking(),
            lnn.Bidirectional(lnn.GRU(5, return_sequences=True)),
            lnn.LSTM(4),
            lnn.Dense(3, activation="tanh"),
        ]
    )
    _same(model, linen, x=x)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_classifier_equals_linen_and_weights_move_both_ways(cell, bidirectional):
    x = jnp.ones((2, 28, 28)) * 0.5
    model = lx.Classifier(
        28, cell=cell, units=(8, 4), bidirectional=bidirectional, rngs=nnx.Rngs(0)
    )
    linen = lnn.Classifier(cell=cell, units=(8, 4), bidirectional=bidirectional)
    _same(model, linen, x=x)
    theirs = linen.init(jax.random.key(5), x)  # linen -> NNX -> linen
    lx.load_linen_variables(model, theirs)
    reference.assert_trees_close(lx.to_linen_variables(model), theirs, atol=0)
    reference.assert_trees_close(model(x), linen.apply(theirs, x), atol=0)


@pytest.mark.slow
def test_weights_of_another_model_are_refused():
    model = lx.Classifier(28, units=(8,), rngs=nnx.Rngs(0))
    other = lnn.Classifier(units=(16,)).init(jax.random.key(0), jnp.ones((1, 28, 28)))
    with pytest.raises(
        ValueError,
        match=r"\['Dense_0'\]\['kernel'\]: the model's parameter is \(8, 10\), the "
        r"variables' \(16, 10\)",
    ):
        lx.load_linen_variables(model, other)
    gru = lnn.Classifier(cell="gru", units=(8,)).init(jax.random.key(0), jnp.ones((1, 28, 28)))
    with pytest.raises(ValueError, match="do not name this model's parameters"):
        lx.load_linen_variables(model, gru)


def test_parameter_counts_of_the_lesson():
    model = lx.Classifier(28, units=(50,), rngs=nnx.Rngs(0))
    assert lstm_jax.count_params(model) == 16_310
    assert lstm_jax.count_params(model.LSTM_0) == 15_800 == lstm_jax.lstm_param_count(28, 50)


def test_nnx_optimizer_trains_these_layers():
    model = lx.Sequential([lx.LSTM(D, 8, rngs=nnx.Rngs(0)), lx.Dense(8, 2, rngs=nnx.Rngs(1))])
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    y = jnp.array([0, 1, 1])

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(X), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_to_linen_and_from_linen_are_the_same_model():
    x = jnp.ones((2, 28, 28)) * 0.3
    model = lx.Sequential(
        [
            lx.Masking(),
            lx.Bidirectional(
                lx.GRU(28, 5, return_sequences=True, rngs=nnx.Rngs(0)), "sum", rngs=nnx.Rngs(1)
            ),
            lx.LSTM(5, 3, go_backwards=True, rngs=nnx.Rngs(2)),
            lx.Dense(3, 2, "tanh", rngs=nnx.Rngs(3)),
        ]
    )
    linen, variables = lx.to_linen(model), lx.to_linen_variables(model)
    reference.assert_trees_close(linen.apply(variables, x), model(x), atol=0)
    back = lx.from_linen(linen, variables, 28)
    assert type(back) is lx.Sequential and lx.to_linen(back) == linen
    reference.assert_trees_close(back(x), model(x), atol=0)
    with pytest.raises(ValueError, match="Linear is not an lstm_jax.nnx layer"):
        lx.to_linen(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


@pytest.mark.slow
def test_summary_and_keras_take_nnx_models(capsys):
    keras = pytest.importorskip("keras")
    model = lx.Classifier(28, units=(50,), rngs=nnx.Rngs(0))
    assert lstm_jax.summary(model, (None, 28, 28)) == 16_310
    assert "LSTM_0 (LSTM)" in capsys.readouterr().out
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28)), jnp.float32)
    with jax.numpy_rank_promotion("allow"):  # Keras's own code broadcasts ranks
        keras_model = lstm_jax.to_keras(model)
        reference.assert_trees_close(np.asarray(keras_model(x)), model(x), atol=1e-5)
        back = lstm_jax.from_keras(keras_model, api="nnx")  # Keras -> NNX
    assert isinstance(back, lx.Sequential) and isinstance(keras_model, keras.Sequential)
    reference.assert_trees_close(back(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_the_trainer_trains_an_nnx_model_as_its_linen_twin(tmp_path):
    """From the same initial weights, the NNX Classifier's run is the linen Classifier's, to
    the bit; the NNX model then holds the trained weights, and ``load_run`` gives it back."""
    from lstm_jax import training
    from lstm_jax.training import steps
    from tests.fakes import FAKE, params_of, run_fake

    config = training.Config(**FAKE)
    linen = run_fake(tmp_path / "linen", model=lnn.Classifier(units=(16,)))
    initial = steps.create_train_state(config, lnn.Classifier(units=(16,)), (28, 28)).params
    model = lx.load_linen_variables(
        lx.Classifier(28, units=(16,), rngs=nnx.Rngs(0)), {"params": initial}
    )
    result = run_fake(tmp_path / "nnx", model=model)
    assert result["nnx_model"] is model
    assert result["test_accuracy"] == linen["test_accuracy"]
    reference.assert_trees_close(params_of(result), params_of(linen), atol=0)
    reference.assert_trees_close(lx.to_linen_variables(model)["params"], params_of(linen), atol=0)
    run = lstm_jax.load_run(tmp_path / "nnx" / "run")
    again = run.nnx_model
    assert isinstance(again, lx.Classifier)
    x = jnp.ones((2, 28, 28)) * 0.5
    reference.assert_trees_close(again(x), model(x), atol=1e-6)
    # Resumed with the NNX model: it continues from the checkpoint, not from its weights.
    resumed = run_fake(tmp_path / "nnx", model=again, epochs=3, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    reference.assert_trees_close(lx.to_linen_variables(again)["params"], params_of(resumed), atol=0)


@pytest.mark.slow
def test_the_lesson_trained_from_an_nnx_classifier_as_from_the_linen_one(tmp_path, report):
    """The lesson's recipe on the real MNIST, seed 0: the NNX Classifier (given the weights
    the trainer draws for seed 0) reaches the linen Classifier's test accuracy."""
    from lstm_jax import training
    from lstm_jax.training import steps
    from tests.fakes import real_data_dir

    config = training.Config(seed=0, data_dir=real_data_dir(), progress=False)
    quiet = dict(print_fn=lambda s: None)
    linen = training.train_and_evaluate(config, tmp_path / "linen", **quiet)
    initial = steps.create_train_state(config, lnn.Classifier(), (28, 28)).params
    model = lx.load_linen_variables(lx.Classifier(28, rngs=nnx.Rngs(0)), {"params": initial})
    result = training.train_and_evaluate(config, tmp_path / "nnx", model=model, **quiet)
    report(
        f"the lesson from an NNX Classifier, seed 0: test accuracy {result['test_accuracy']:.2%}"
        f" (linen: {linen['test_accuracy']:.2%})"
    )
    assert result["test_accuracy"] == linen["test_accuracy"]


@pytest.mark.slow
def test_nnx_models_handed_back_predict_without_dropout(tmp_path, record_largest):
    """Every NNX model lstm_jax hands back is in evaluation mode: ``load_run(...).nnx_model``,
    ``train_and_evaluate(...)["nnx_model"]`` and ``from_keras(..., api="nnx")`` give the
    run's (or Keras's) inference outputs, the same at every call."""
    import keras

    from tests.fakes import run_fake

    model = lx.Classifier(28, units=(16,), dropout=0.3, recurrent_dropout=0.3, rngs=nnx.Rngs(0))
    result = run_fake(tmp_path, model=model, epochs=1)
    run = lstm_jax.load_run(tmp_path / "run")
    x = np.random.default_rng(1).integers(0, 256, (64, 28, 28, 1)).astype(np.uint8)
    want = run.logits(x)
    for handed_back in (result["nnx_model"], run.nnx_model):
        got = handed_back(jnp.asarray(x, jnp.float32).reshape(64, 28, 28) / 255)
        np.testing.assert_allclose(got, want, atol=1e-5)
    with jax.numpy_rank_promotion("allow"):
        keras_model = keras.Sequential(
            [keras.Input((T, D)), keras.layers.LSTM(8, dropout=0.4, recurrent_dropout=0.4)]
        )
        expected = np.asarray(keras_model(X))
    back = lstm_jax.from_keras(keras_model, api="nnx")
    diff = np.abs(np.asarray(back(X)) - expected).max()
    record_largest("NNX model from Keras with dropout, against Keras (inference)", diff)
    assert diff < 1e-5
    np.testing.assert_array_equal(back(X), back(X))
    back.train()  # and training mode is one call away
    assert not np.allclose(back(X), back(X), atol=1e-4)


def test_a_dropout_rate_set_after_construction_is_used_and_checked():
    layer = lx.LSTM(D, 8, rngs=nnx.Rngs(0))
    without = layer(X)
    layer.dropout = 0.5  # as an NNX user sets an attribute; built, a layer is in training
    assert not np.allclose(layer(X), without, atol=1e-4)
    layer.eval()
    np.testing.assert_array_equal(layer(X), without)
    layer.dropout = 1.0
    with pytest.raises(ValueError, match="LSTM: dropout must be at least 0 and below 1"):
        layer(X)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_the_nnx_language_model_is_the_linen_one(cell):
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 9, (3, 7)))
    model = lx.LanguageModel(9, embed=4, cell=cell, units=(6, 5), rngs=nnx.Rngs(0))
    linen_model = lx.to_linen(model)
    variables = lx.to_linen_variables(model)
    logits, state = model(ids, return_state=True)
    want, want_state = linen_model.apply(variables, ids, return_state=True)
    np.testing.assert_allclose(logits, want, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state, want_state)
    again = lx.from_linen(linen_model, variables, 0)
    np.testing.assert_allclose(again(ids), want, atol=1e-6)
    half, carried = model(ids[:, :3], return_state=True)
    rest = model(ids[:, 3:], initial_state=carried)
    np.testing.assert_allclose(jnp.concatenate([half, rest], 1), want, atol=1e-6)
