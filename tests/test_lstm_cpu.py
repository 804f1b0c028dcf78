"""The LSTM's and the GRU's CPU kernel (``lstm_jax.lstm_cpu``): built and used here, and
equal to the float64 NumPy reference (outputs) and to the scans with their gradients
(``lstm_scan``, itself held to autodiff in ``test_recurrent.py``, and autodiff through
``gru_cell``): outputs and gradients within 1e-5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax
from lstm_jax import cells, gru_scan, lstm_cpu, lstm_cudnn, lstm_scan
from tests import reference

SHAPES = [  # T, B, D, U: one step, one example, units no vector divides, a batch split in two
    (1, 1, 3, 4),
    (9, 3, 4, 7),
    (28, 70, 28, 50),
    (12, 33, 20, 40),
]


def make(t, b, d, u, seed=0):
    r = np.random.default_rng(seed)
    params = {
        "kernel": r.normal(0, 0.2, (d, 4 * u)),
        "recurrent_kernel": r.normal(0, 0.2, (u, 4 * u)),
        "bias": r.normal(0, 0.2, (4 * u,)),
    }
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    xs = jnp.asarray(r.normal(size=(t, b, d)), jnp.float32)
    h0 = jnp.asarray(r.normal(0, 0.5, (b, u)), jnp.float32)
    c0 = jnp.asarray(r.normal(size=(b, u)), jnp.float32)
    return params, xs, h0, c0


def scan(params, xs, h0, c0):
    """The custom-gradient scan the kernel replaces."""
    return lstm_scan._lstm_scan(params, xs, h0, c0, 1)


def loss(fn, argnums=(0, 1, 2, 3)):
    """A loss that weighs every output differently, so each cotangent matters; a mean over
    the batch, as training's. Differentiated in ``argnums``."""

    def value(params, xs, h0, c0):
        hs, h, c = fn(params, xs, h0, c0)
        weights = jnp.cos(jnp.arange(hs.size, dtype=jnp.float32)).reshape(hs.shape)
        total = jnp.sum(hs * weights) + jnp.sum(jnp.sin(h)) + jnp.sum(c**2)
        return total / xs.shape[1]

    return jax.jit(jax.value_and_grad(value, argnums=argnums))


def test_the_kernel_is_built_and_runs_the_lstm_here():
    """CI's machines have a C++ compiler and oneDNN's wheels: the kernel must be there, and
    ``lstm`` must use it (one FFI call forward, one backward)."""
    params, xs, h0, c0 = make(5, 4, 3, 6)
    assert lstm_cpu.why_not(params, xs, (h0, c0)) is None
    x = jnp.swapaxes(xs, 0, 1)
    text = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(lstm_jax.lstm(p, x))))(params))
    assert "lstm_jax_lstm_cpu_forward" in text and "lstm_jax_lstm_cpu_backward" in text


@pytest.fixture(params=[1, 2, 3], ids=lambda k: f"{k}threads")
def threads(request, monkeypatch):
    """The OpenMP threads of each kernel call: the LSTM's units are split among them, each
    thread running its share of every step (``lstm_cpu._threads``: 1 on each of the tests'
    two devices, every core on a device of its own; 3 splits the 50 units unevenly)."""
    monkeypatch.setattr(lstm_cpu, "_threads", lambda: request.param)
    jax.clear_caches()  # the count is read when a call is traced
    yield request.param
    jax.clear_caches()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_D{}_U{}".format(*s))
def test_outputs_match_the_float64_numpy_reference(shape, threads):
    params, xs, h0, c0 = make(*shape)
    hs, h, c = jax.jit(lstm_cpu.run)(params, xs, h0, c0)
    ref_hs, (ref_h, ref_c) = reference.run(
        "lstm", params, np.swapaxes(xs, 0, 1), initial_state=(h0, c0)
    )
    np.testing.assert_allclose(hs, np.swapaxes(ref_hs, 0, 1), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h, ref_h, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(c, ref_c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_D{}_U{}".format(*s))
def test_outputs_and_gradients_match_the_scan(shape, threads):
    args = make(*shape)
    with jax.default_matmul_precision("highest"):
        got, want = loss(lstm_cpu.run)(*args), loss(scan)(*args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    reference.assert_trees_close(got[1], want[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("argnums", [(0,), (0, 1), (0, 2), (0, 3), (1,)], ids=str)
def test_gradients_of_some_arguments_match_the_scan_and_skip_the_others(argnums, threads):
    """The backward pass computes the inputs' gradient only where the inputs are
    differentiated (not the trainer's data), and the initial state's only where h0 or c0
    is: the others are results of size 0 in its call. What it does compute is the scan's."""
    args = make(12, 33, 20, 40)
    with jax.default_matmul_precision("highest"):
        got, want = loss(lstm_cpu.run, argnums)(*args), loss(scan, argnums)(*args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    reference.assert_trees_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    call = backward_call(jax.make_jaxpr(loss(lstm_cpu.run, argnums))(*args).jaxpr)
    dxs, dh0, dc0 = (v.aval.shape for v in call.outvars[:3])
    assert (dxs != (0,)) == (1 in argnums)
    assert (dh0 != (0,)) == (dc0 != (0,)) == (2 in argnums or 3 in argnums)


def backward_call(jaxpr):
    """The equation of the kernel's backward call in ``jaxpr``, at any depth, or None."""
    for eqn in jaxpr.eqns:
        if "_cpu_backward_" in str(eqn.params.get("target_name", "")):
            return eqn
    for sub in jax.extend.core.subjaxprs(jaxpr):
        if (found := backward_call(sub)) is not None:
            return found
    return None


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_D{}_U{}".format(*s))
def test_bfloat16_is_the_float32_kernel_within_bfloat16_rounding(shape, threads):
    """In bfloat16 the products read bfloat16 and sum in float32; the gates and the cell
    state stay float32: outputs and gradients within a few of bfloat16's rounding steps
    (2^-8 = 3.9e-3) of the float32 kernel given the same, bfloat16, numbers."""
    assert_bfloat16_within_rounding(lstm_cpu.run, loss, make(*shape))


def assert_bfloat16_within_rounding(run, loss_of, args):
    """``run`` on ``args`` in bfloat16 against ``run`` on the same numbers in float32."""
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), args)
    assert lstm_cpu.why_not(half[0], half[1], half[2:]) is None
    whole = jax.tree.map(lambda a: a.astype(jnp.float32), half)

    def in_float32(fn):
        return lambda *args: jax.tree.map(lambda a: a.astype(jnp.float32), fn(*args))

    with jax.default_matmul_precision("highest"):
        got, want = loss_of(in_float32(run))(*half), loss_of(run)(*whole)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(got[1]))
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        assert np.abs(np.asarray(g, np.float32) - w).max() <= 1e-2 * np.abs(w).max()
    outputs = jax.jit(run)(*half), jax.jit(run)(*whole)
    for g, w in zip(*outputs, strict=True):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=1e-2)


def test_inference_and_training_forward_passes_agree(threads):
    """Without a gradient the kernel keeps no activations: the same outputs."""
    args = make(10, 6, 5, 40)
    plain = jax.jit(lstm_cpu.run)(*args)
    with_grad, _ = jax.jit(jax.vjp, static_argnums=0)(lstm_cpu.run, *args)
    reference.assert_trees_close(plain, with_grad)


def test_vmap_and_a_nan_propagate():
    """Under ``jax.vmap`` (a call per element), and a NaN in one example's input reaches
    that example's later outputs and nothing else."""
    params, xs, h0, c0 = make(4, 3, 2, 5)
    starts = (jnp.stack([h0, -h0]), jnp.stack([c0, 2 * c0]))
    batched = jax.vmap(lstm_cpu.run, in_axes=(None, None, 0, 0))(params, xs, *starts)
    for k in range(2):
        one = lstm_cpu.run(params, xs, starts[0][k], starts[1][k])
        reference.assert_trees_close(jax.tree.map(lambda a, k=k: a[k], batched), one)
    hs, h, c = lstm_cpu.run(params, xs.at[1, 0, 0].set(jnp.nan), h0, c0)
    assert np.isnan(hs[1:, 0]).all() and np.isfinite(hs[:, 1:]).all() and np.isnan(c[0]).all()


def test_the_scan_runs_where_the_kernel_must_not(monkeypatch):
    """Inside ``lstm_cudnn.portable()`` (jax.export), for other dtypes, and when turned off,
    ``lstm`` scans, with the same results."""
    params, xs, h0, c0 = make(5, 4, 3, 6)
    x = jnp.swapaxes(xs, 0, 1)

    def jaxpr():
        return str(jax.make_jaxpr(lambda p: lstm_jax.lstm(p, x, initial_state=(h0, c0)))(params))

    assert "lstm_cpu" in jaxpr()
    with lstm_cudnn.portable():
        assert "lstm_cpu" not in jaxpr()
    half = {k: v.astype(jnp.bfloat16) for k, v in params.items()}  # and float32 inputs
    assert "one for every array" in lstm_cpu.why_not(half, xs, (h0, c0))
    kernel = lstm_jax.lstm(params, x, initial_state=(h0, c0))
    monkeypatch.setenv("LSTM_JAX_CPU_KERNEL", "0")
    assert "lstm_cpu" not in jaxpr()
    np.testing.assert_allclose(kernel, lstm_jax.lstm(params, x, initial_state=(h0, c0)), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_two_devices_calling_at_once_agree_with_one(on_two_cpu_devices, threads):
    """The trainer's two devices call the kernel at the same time: each call has its own
    scratch memory (oneDNN's shared one crashed the process), and the summed gradients equal
    the whole batch's; with two threads a call, the two devices' calls run on two teams of
    the kernel's threads at once."""
    (largest,) = on_two_cpu_devices("lstm_cpu_two_devices.py", str(threads))
    assert float(largest) < 1e-5


# The GRU's kernel: the same checks against the float64 reference and autodiff's scan.


def make_gru(t, b, d, u, seed=0):
    params, xs, h0, _ = make(t, b, d, u, seed)
    r = np.random.default_rng(seed + 1)
    params = {
        "kernel": params["kernel"][:, : 3 * u],
        "recurrent_kernel": params["recurrent_kernel"][:, : 3 * u],
        "bias": jnp.asarray(r.normal(0, 0.2, (2, 3 * u)), jnp.float32),
    }
    return params, xs, h0


def gru_autodiff(params, xs, h0):
    """``gru_cell`` under ``lax.scan`` and autodiff: what the kernel replaces."""
    h, hs = jax.lax.scan(lambda h, x: cells.gru_cell(params, h, x), h0, xs)
    return hs, h


def gru_loss(fn, argnums=(0, 1, 2)):
    def value(params, xs, h0):
        hs, h = fn(params, xs, h0)
        weights = jnp.cos(jnp.arange(hs.size, dtype=jnp.float32)).reshape(hs.shape)
        return (jnp.sum(hs * weights) + jnp.sum(jnp.sin(h))) / xs.shape[1]

    return jax.jit(jax.value_and_grad(value, argnums=argnums))


@pytest.mark.parametrize("batch", [4, gru_scan.CUSTOM_GRADIENT_BELOW])
def test_the_kernel_runs_the_gru_here_at_every_batch(batch):
    """``gru`` runs the kernel below and above the hand-written scan's batch limit."""
    params, xs, h0 = make_gru(5, batch, 3, 6)
    assert lstm_cpu.why_not(params, xs, (h0,)) is None
    x = jnp.swapaxes(xs, 0, 1)
    text = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(lstm_jax.gru(p, x))))(params))
    assert "lstm_jax_gru_cpu_forward" in text and "lstm_jax_gru_cpu_backward" in text


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_D{}_U{}".format(*s))
def test_gru_outputs_match_the_float64_numpy_reference(shape):
    params, xs, h0 = make_gru(*shape)
    hs, h = jax.jit(lstm_cpu.run_gru)(params, xs, h0)
    ref_hs, (ref_h,) = reference.run("gru", params, np.swapaxes(xs, 0, 1), initial_state=(h0,))
    np.testing.assert_allclose(hs, np.swapaxes(ref_hs, 0, 1), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h, ref_h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_D{}_U{}".format(*s))
def test_gru_outputs_and_gradients_match_autodiff(shape):
    args = make_gru(*shape)
    with jax.default_matmul_precision("highest"):
        got, want = gru_loss(lstm_cpu.run_gru)(*args), gru_loss(gru_autodiff)(*args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    reference.assert_trees_close(got[1], want[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("argnums", [(0,), (0, 1), (0, 2), (1,)], ids=str)
def test_gru_gradients_of_some_arguments_match_autodiff_and_skip_the_others(argnums):
    """As the LSTM's: dX and dh0 are computed only where the inputs and h0 are
    differentiated."""
    args = make_gru(12, 33, 20, 40)
    with jax.default_matmul_precision("highest"):
        got = gru_loss(lstm_cpu.run_gru, argnums)(*args)
        want = gru_loss(gru_autodiff, argnums)(*args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    reference.assert_trees_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    call = backward_call(jax.make_jaxpr(gru_loss(lstm_cpu.run_gru, argnums))(*args).jaxpr)
    dxs, dh0 = (v.aval.shape for v in call.outvars[:2])
    assert (dxs != (0,)) == (1 in argnums)
    assert (dh0 != (0,)) == (2 in argnums)


def test_gru_in_bfloat16_is_the_float32_kernel_within_bfloat16_rounding():
    assert_bfloat16_within_rounding(lstm_cpu.run_gru, gru_loss, make_gru(12, 33, 20, 40))


def test_gru_inference_and_training_forward_passes_agree_and_a_nan_propagates():
    args = make_gru(10, 6, 5, 8)
    plain = jax.jit(lstm_cpu.run_gru)(*args)
    with_grad, _ = jax.jit(jax.vjp, static_argnums=0)(lstm_cpu.run_gru, *args)
    reference.assert_trees_close(plain, with_grad)
    params, xs, h0 = args
    hs, h = lstm_cpu.run_gru(params, xs.at[1, 0, 0].set(jnp.nan), h0)
    assert np.isnan(hs[1:, 0]).all() and np.isfinite(hs[:, 1:]).all() and np.isnan(h[0]).all()


@pytest.mark.parametrize("batch", [4, gru_scan.CUSTOM_GRADIENT_BELOW])
def test_the_gru_scans_where_the_kernel_must_not(monkeypatch, batch):
    """Inside ``portable()`` and when turned off, ``gru`` scans (the hand-written gradient's
    below its batch limit, autodiff's from it), with the kernel's outputs and gradients."""
    params, xs, h0 = make_gru(5, batch, 3, 6)
    x = jnp.swapaxes(xs, 0, 1)

    def value(p, x):
        return jnp.sum(jnp.sin(lstm_jax.gru(p, x, initial_state=(h0,), return_sequences=True)))

    def grad():  # a new function each time: traced anew, not taken from JAX's caches
        return jax.value_and_grad(lambda p, x: value(p, x), argnums=(0, 1))

    assert "gru_cpu" in str(jax.make_jaxpr(grad())(params, x))
    with lstm_cudnn.portable():
        assert "gru_cpu" not in str(jax.make_jaxpr(grad())(params, x))
    kernel = jax.jit(grad())(params, x)
    monkeypatch.setenv("LSTM_JAX_CPU_KERNEL", "0")
    assert "gru_cpu" not in str(jax.make_jaxpr(grad())(params, x))
    with jax.default_matmul_precision("highest"):
        reference.assert_trees_close(jax.jit(grad())(params, x), kernel, atol=1e-5, rtol=1e-5)
