"""Every path lowers for GPU and TPU, here on a CPU: ``jax.export`` lowers a function for a
platform that is not present. Each test is one path on one platform, and a failure names
both. The cuDNN kernel is the exception: its lowering asks cuDNN itself, so
``benchmarks/gpu.sh`` proves it on a GPU (``use_cudnn="auto"`` scans everywhere else).

Each path is traced inside ``lstm_cudnn.portable()``, as ``Run.export`` traces it: traced here,
on a CPU, it would otherwise take the CPU's kernel (``lstm_jax.lstm_cpu``), which a program
traced on a GPU or TPU never holds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

import lstm_jax
from lstm_jax import linen, lstm_cudnn, sampling, training
from lstm_jax import nnx as lnnx
from lstm_jax.training import steps, tasks

PLATFORMS = ("cuda", "tpu")
B, T, D, U = 8, 6, 5, 4
KEY = jax.random.key(0)


def spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def value_and_grad(fn):
    """The loss ``sum(fn(params, x) ** 2)`` and its gradient: the backward pass lowers too."""
    return jax.value_and_grad(lambda params, *args: jnp.sum(fn(params, *args) ** 2))


def _sequence_function(name, batch=B, **options):
    init, run = {
        "lstm": (lstm_jax.init_lstm, lstm_jax.lstm),
        "gru": (lstm_jax.init_gru, lstm_jax.gru),
        "simple_rnn": (lstm_jax.init_simple_rnn, lstm_jax.simple_rnn),
    }[name]
    params = init(KEY, D, U)
    masked = options.pop("mask", False)

    def fn(params, x, *mask):
        out = run(params, x, return_sequences=True, mask=mask[0] if mask else None, **options)
        return out

    args = [params, spec(batch, T, D)] + ([spec(batch, T, dtype=jnp.bool_)] if masked else [])
    return value_and_grad(fn), args


def _dropout():
    params = lstm_jax.init_lstm(KEY, D, U)

    def fn(params, x, key):
        return lstm_jax.lstm(params, x, dropout=0.2, recurrent_dropout=0.3, key=key)

    return value_and_grad(fn), [params, spec(B, T, D), jax.random.key(1)]


def _linen(module, x):
    variables = jax.eval_shape(module.init, KEY, x)

    def fn(variables, x):
        return module.apply(variables, x)

    return value_and_grad(fn), [variables, x]


def _nnx_classifier():
    model = lnnx.Classifier(D, units=(U,), num_classes=3, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def fn(params, rest, x):
        return nnx.merge(graphdef, params, rest)(x)

    return value_and_grad(fn), [params, rest, spec(B, T, D)]


def _trainer(kind):
    """One train step (on a mesh of one device) or the evaluation of an epoch, as
    ``train_and_evaluate`` runs them; a language model's with the state carried."""
    text = kind.endswith("language model")
    config = training.Config(units=(U,), batch_size=B, dropout=0.1, clipnorm=1.0, bptt=T)
    if text:
        model, shape, task = (
            linen.LanguageModel(vocab_size=7, embed=3, units=(U,)),
            (T,),
            "next_token",
        )
        image, label = spec(B, T, dtype=jnp.int32), spec(B, T, dtype=jnp.int32)
    else:
        model, shape, task = linen.Classifier(units=(U,)), (28, 28), "classify"
        image, label = spec(B, 28, 28, 1, dtype=jnp.uint8), spec(B, dtype=jnp.int32)
    state = jax.eval_shape(lambda: steps.create_train_state(config, model, shape))
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    calls = steps.model_calls(model, shape)
    batch = {"image": image, "label": label, "weight": spec(B)}
    if kind.startswith("evaluation"):
        evaluate = steps.make_evaluate(
            config, model, mesh, calls, task=tasks.TASKS[task], streams=text
        )
        batches = {k: spec(3, *v.shape, dtype=v.dtype) for k, v in batch.items()}
        return evaluate, [state.params, batches]
    step = functools.partial(
        steps.train_step, mesh=mesh, task=tasks.TASKS[task], calls=calls, seed=0
    )
    if not text:
        return jax.jit(step), [state, batch]
    carry = ((spec(B, U), spec(B, U)),)
    return jax.jit(step), [state, batch, carry]


def _generation_step():
    model = linen.LanguageModel(vocab_size=7, embed=3, units=(U, U), cell="gru")
    variables = jax.eval_shape(model.init, KEY, spec(1, 1, dtype=jnp.int32))
    sampler = sampling.Sampler(model, variables)
    state = ((spec(1, U),), (spec(1, U),))
    draw = functools.partial(sampling.sample, temperature=0.8, top_k=3)

    def step(variables, token, state, key):
        logits, state = sampler._read.__wrapped__(variables, token[:, None], state)
        return draw(logits, key), state

    return jax.jit(step), [variables, spec(1, dtype=jnp.int32), state, jax.random.key(0)]


PATHS = {
    "lstm (custom-gradient scan, gradient summed after it)": lambda: _sequence_function("lstm"),
    "lstm (custom-gradient scan, gradient summed each step)": lambda: _sequence_function(
        "lstm", batch=64
    ),
    "lstm, reversed and unrolled": lambda: _sequence_function("lstm", go_backwards=True, unroll=2),
    "gru (custom-gradient scan)": lambda: _sequence_function("gru"),
    "gru (its cell's scan, from 64 examples)": lambda: _sequence_function("gru", batch=64),
    "simple_rnn": lambda: _sequence_function("simple_rnn"),
    "lstm with a mask": lambda: _sequence_function("lstm", mask=True),
    "gru with a mask": lambda: _sequence_function("gru", mask=True),
    "dropout": _dropout,
    "linen Bidirectional, masked": lambda: _linen(
        linen.Sequential([linen.Masking(), linen.Bidirectional(linen.LSTM(U))]), spec(B, T, D)
    ),
    "linen Classifier (stacked GRU, LSTM)": lambda: _linen(
        linen.Sequential([linen.GRU(U, return_sequences=True), linen.LSTM(U), linen.Dense(3)]),
        spec(B, T, D),
    ),
    "linen LanguageModel": lambda: _linen(
        linen.LanguageModel(vocab_size=7, embed=3, units=(U,)), spec(B, T, dtype=jnp.int32)
    ),
    "nnx Classifier": _nnx_classifier,
    "train step": lambda: _trainer("train step"),
    "train step of a language model": lambda: _trainer("train step of a language model"),
    "evaluation": lambda: _trainer("evaluation"),
    "evaluation of a language model": lambda: _trainer("evaluation of a language model"),
    "generation step": _generation_step,
}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("path", list(PATHS))
def test_path_lowers_for(path, platform):
    function, args = PATHS[path]()
    function = function if hasattr(function, "lower") else jax.jit(function)
    try:
        with lstm_cudnn.portable():
            exported = jax.export.export(function, platforms=[platform])(*args)
    except Exception as e:  # the path and the platform, then what JAX said
        pytest.fail(f"{path} does not lower for {platform}: {type(e).__name__}: {e}")
    assert exported.platforms == (platform,)
    assert "stablehlo" in exported.mlir_module()
