"""The LSTM's cuDNN path (``lstm_jax.lstm_cudnn``), on CPU: cuDNN's kernel replaced by
``jax.experimental.rnn``'s own reference (``lstm_ref`` over ``unpack_lstm_weights``), which
computes what cuDNN computes from the same flat weights. Outputs and gradients must equal
the scan's within 1e-5. On a GPU, ``benchmarks/gpu.sh`` checks the real kernel the same way."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from lstm_jax import linen as lnn
from lstm_jax import lstm_cudnn, recurrent
from tests import reference

B, T, D, U = 4, 7, 3, 5
TOL = 1e-5


def reference_kernel(x, h0, c0, weights, lengths):
    """What ``jax.experimental.rnn.lstm`` computes on a GPU, from its reference."""
    d, u = x.shape[-1], h0.shape[-1]
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, d, u, 1, False)
    y, h, c = rnn.lstm_ref(
        x, h0[None], c0[None], w_ih, w_hh, b_ih, b_hh, lengths, d, u, 1, 0.0, False
    )
    return y, h[0], c[0]


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """cuDNN "available" here, its kernel being the reference."""
    monkeypatch.setattr(lstm_cudnn, "why_not", lambda *a, **k: None)
    monkeypatch.setattr(lstm_cudnn, "_cudnn_lstm", reference_kernel)


def _params(seed=0, d=D, u=U):
    params = recurrent.init_lstm(jax.random.key(seed), d, u)
    rng = np.random.default_rng(seed)
    params["bias"] = jnp.asarray(rng.normal(0, 0.5, 4 * u), jnp.float32)
    return params


def _inputs(seed=1, b=B, t=T, d=D):
    return jnp.asarray(np.random.default_rng(seed).normal(0, 1, (b, t, d)), jnp.float32)


def _state(seed=2):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(0, 0.5, (B, U)), jnp.float32) for _ in range(2))


# Right-padded: lengths 7, 3, 0 (no valid step), 1.
RIGHT_PADDED = jnp.arange(T)[None] < jnp.array([7, 3, 0, 1])[:, None]


def test_cudnn_weights_are_keras_weights_in_cudnns_layout():
    params = _params()
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
        lstm_cudnn.cudnn_weights(params), D, U, 1, False
    )
    assert rnn.get_num_params_in_lstm(D, U, 1, False) == lstm_cudnn.cudnn_weights(params).size
    np.testing.assert_array_equal(w_ih[0], params["kernel"].T)  # i, f, g, o = Keras's i, f, c, o
    np.testing.assert_array_equal(w_hh[0], params["recurrent_kernel"].T)
    np.testing.assert_array_equal(b_ih[0], params["bias"])
    np.testing.assert_array_equal(b_hh[0], np.zeros(4 * U))


def _both(fn, params, x, state):
    """``fn``'s value and its gradients with respect to parameters, inputs and state."""
    return jax.value_and_grad(fn, argnums=(0, 1, 2))(params, x, state)


@pytest.mark.slow
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forwards", "go_backwards"])
@pytest.mark.parametrize("mask", [None, RIGHT_PADDED], ids=["no_mask", "right_padded"])
@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "initial_state"])
def test_the_cudnn_path_gives_the_scans_outputs_and_gradients(go_backwards, mask, initial):
    params, x = _params(), _inputs()
    state = _state() if initial else tuple(jnp.zeros((B, U)) for _ in range(2))
    weights = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, U)), jnp.float32)

    def loss(run):
        def f(params, x, state):
            hs, h, c = run(params, x, state)
            return jnp.sum(hs * weights) + jnp.sum(h * c)

        return f

    def scan(params, x, state):
        return recurrent.run_cell(
            recurrent.CELLS["lstm"],
            params,
            x,
            return_sequences=True,
            return_state=True,
            initial_state=state,
            go_backwards=go_backwards,
            mask=mask,
        )

    def cudnn(params, x, state):
        return lstm_cudnn.run(params, x, state, mask, go_backwards, kernel=reference_kernel)

    got, want = _both(loss(cudnn), params, x, state), _both(loss(scan), params, x, state)
    reference.assert_trees_close(got, want, atol=TOL, rtol=TOL)
    reference.assert_trees_close(cudnn(params, x, state), scan(params, x, state), atol=TOL)


def _layers_both_ways(module_fn, x, mask=None):
    """A model built with ``use_cudnn`` True and False, the same weights: outputs and
    gradients of both."""
    variables = module_fn(False).init(jax.random.key(0), x)

    def run(use_cudnn):
        model = module_fn(use_cudnn)

        def f(variables, x):
            out = model.apply(variables, x, **({} if mask is None else {"mask": mask}))
            return jnp.sum(jnp.sin(out)), out

        (_, out), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(variables, x)
        return out, grads

    return run(True), run(False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "build",
    [
        lambda u: lnn.LSTM(U, return_sequences=True, use_cudnn=u),
        lambda u: lnn.Bidirectional(lnn.LSTM(U, return_sequences=True, use_cudnn=u)),
        lambda u: lnn.Sequential(
            [lnn.LSTM(U, return_sequences=True, use_cudnn=u), lnn.LSTM(3, use_cudnn=u)]
        ),
        lambda u: lnn.Sequential(
            [
                lnn.Bidirectional(lnn.LSTM(U, return_sequences=True, use_cudnn=u)),
                lnn.LSTM(3, go_backwards=True, use_cudnn=u),
                lnn.Dense(10),
            ]
        ),
    ],
    ids=["LSTM", "Bidirectional", "stacked", "Bidirectional_stacked_backwards"],
)
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "right_padded"])
def test_layers_on_cudnn_equal_layers_that_scan(as_on_a_gpu, build, masked):
    x = _inputs()
    got, want = _layers_both_ways(build, x, RIGHT_PADDED if masked else None)
    reference.assert_trees_close(got, want, atol=TOL, rtol=TOL)


def test_auto_scans_a_mask_that_is_not_right_padded(as_on_a_gpu):
    params, x = _params(), _inputs()
    left_padded = jnp.flip(RIGHT_PADDED, axis=1)
    scan = recurrent.lstm(params, x, mask=left_padded, return_sequences=True, use_cudnn=False)
    auto = jax.jit(
        lambda p, x, m: recurrent.lstm(p, x, mask=m, return_sequences=True, use_cudnn="auto")
    )(params, x, left_padded)
    reference.assert_trees_close(auto, scan, atol=TOL)
    with pytest.raises(ValueError, match="its mask is not right-padded"):
        recurrent.lstm(params, x, mask=left_padded, use_cudnn=True)


def test_use_cudnn_true_where_cudnn_cannot_serve_says_why():
    params, x = _params(), _inputs()
    with pytest.raises(
        ValueError,
        match=r"use_cudnn=True, but cuDNN cannot run this LSTM: there is no GPU here \(JAX's "
        r"default backend is cpu\)",
    ):
        recurrent.lstm(params, x, use_cudnn=True)
    with pytest.raises(ValueError, match=r"use_cudnn must be 'auto', True or False; got 'yes'"):
        recurrent.lstm(params, x, use_cudnn="yes")
    # On CPU, "auto" and False scan: the same numbers.
    reference.assert_trees_close(
        recurrent.lstm(params, x), recurrent.lstm(params, x, use_cudnn=False), atol=0
    )


def test_why_not_names_each_reason(monkeypatch):
    params, x = _params(), _inputs()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    from jax._src.lib import gpu_rnn

    if gpu_rnn is None:  # this jaxlib (CPU) has no cuDNN RNN
        assert "no cuDNN RNN" in lstm_cudnn.why_not(params, x, unroll=1)
        return
    assert "unroll=4" in lstm_cudnn.why_not(params, x, unroll=4)
    assert "float32 only" in lstm_cudnn.why_not(params, x.astype(jnp.bfloat16), unroll=1)
    assert lstm_cudnn.why_not(params, x, unroll=1) is None


@pytest.mark.slow
def test_the_classifier_carries_use_cudnn_to_its_lstms(as_on_a_gpu):
    for use_cudnn in lstm_cudnn.USE_CUDNN:
        model = lnn.Classifier(units=(8, 4), bidirectional=True, use_cudnn=use_cudnn)
        assert [m.layer.use_cudnn for m in model.layers()[:2]] == [use_cudnn] * 2
    x = _inputs(d=28)
    got, want = _layers_both_ways(
        lambda u: lnn.Classifier(units=(8, 4), bidirectional=True, use_cudnn=u), x
    )
    reference.assert_trees_close(got, want, atol=TOL, rtol=TOL)
