"""The functional core against the float64 NumPy reference, and against itself."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lstm_jax
import lstm_jax.lstm_scan
from lstm_jax import recurrent
from tests import reference

# float32 against a float64 reference, sequences up to 9 steps with units <= 16.
ATOL, RTOL = 2e-6, 1e-5

CELLS = {
    "lstm": (lstm_jax.init_lstm, lstm_jax.lstm_cell, lstm_jax.lstm, 2),
    "gru": (lstm_jax.init_gru, lstm_jax.gru_cell, lstm_jax.gru, 1),
    "simple_rnn": (lstm_jax.init_simple_rnn, lstm_jax.simple_rnn_cell, lstm_jax.simple_rnn, 1),
}
cells = pytest.mark.parametrize("name", list(CELLS), ids=list(CELLS))

B, T, D, U = 3, 9, 4, 6


def make_params(name, input_dim=D, units=U, seed=0):
    """Keras-initialised weights plus a non-zero bias, so bias mistakes show."""
    init = CELLS[name][0]
    params = init(jax.random.key(seed), input_dim, units)
    rng = np.random.default_rng(seed + 100)
    params["bias"] = jnp.asarray(rng.normal(0, 0.5, params["bias"].shape), jnp.float32)
    return params


def make_inputs(batch=B, time=T, features=D, seed=1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(0, 1, (batch, time, features)), jnp.float32)


def make_state(name, batch=B, units=U, seed=2):
    rng = np.random.default_rng(seed)
    n = CELLS[name][3]
    return tuple(jnp.asarray(rng.normal(0, 0.5, (batch, units)), jnp.float32) for _ in range(n))


def as_carry(name, states):
    return tuple(states) if name == "lstm" else states[0]


def run_seq(name, params, x, **kw):
    out = CELLS[name][2](params, x, return_sequences=True, return_state=True, **kw)
    return out[0], tuple(out[1:])


# ---------------------------------------------------------------- against NumPy


@pytest.mark.parametrize("gate_axis", [-1, 0], ids=["batch_major", "feature_major"])
def test_lstm_gates_stay_within_float32_rounding_of_exact(gate_axis):
    """The gates use sigmoid(x) = (1 + tanh(x / 2)) / 2, one tanh for all four blocks; each
    stays within 2.5e-7 of the float64 sigmoid / tanh over [-30, 30], in either layout (XLA's
    own float32 tanh is off by up to 2.4e-7 there, near |x| = 8)."""
    units = 1000
    z = np.linspace(-30, 30, 4 * units * 50).reshape(50, 4 * units).astype(np.float32)
    z32 = jnp.asarray(z if gate_axis == -1 else z.T)
    z = z.astype(np.float64)  # the same inputs, so only the functions' rounding is compared
    gates = jax.jit(lambda z: lstm_jax.lstm_scan._lstm_gates(z, gate_axis))(z32)
    blocks = np.split(z, 4, axis=-1)
    exact = [1 / (1 + np.exp(-blocks[0])), 1 / (1 + np.exp(-blocks[1])), np.tanh(blocks[2])]
    exact.append(1 / (1 + np.exp(-blocks[3])))
    for got, want in zip(gates, exact, strict=True):
        got = np.asarray(got, np.float64)
        np.testing.assert_allclose(got if gate_axis == -1 else got.T, want, rtol=0, atol=2.5e-7)


@cells
def test_one_step_matches_numpy(name):
    params, x, states = make_params(name), make_inputs()[:, 0], make_state(name)
    carry, y = CELLS[name][1](params, as_carry(name, states), x)
    _, ref_states = reference.run(name, params, np.asarray(x)[:, None], initial_state=states)
    got = carry if name == "lstm" else (carry,)
    for g, r in zip(got, ref_states, strict=True):
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(y, got[0])


@cells
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_sequence_matches_numpy(name, go_backwards, with_state, record_largest):
    params, x = make_params(name), make_inputs()
    states = make_state(name) if with_state else None
    outs, final = run_seq(name, params, x, initial_state=states, go_backwards=go_backwards)
    ref_outs, ref_final = reference.run(
        name, params, x, initial_state=states, go_backwards=go_backwards
    )
    record_largest(
        "abs difference against the float64 NumPy reference", np.abs(outs - ref_outs).max()
    )
    np.testing.assert_allclose(outs, ref_outs, atol=ATOL, rtol=RTOL)
    for g, r in zip(final, ref_final, strict=True):
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=RTOL)


def _mask():
    mask = np.ones((B, T), bool)
    mask[0, [2, 3, 7]] = False  # gaps in the middle
    mask[1, :4] = False  # leading padding
    mask[2, :] = False  # no valid step at all
    return jnp.asarray(mask)


@cells
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
def test_masked_sequence_matches_numpy(name, go_backwards, record_largest):
    params, x, mask, states = make_params(name), make_inputs(), _mask(), make_state(name)
    outs, final = run_seq(
        name, params, x, mask=mask, initial_state=states, go_backwards=go_backwards
    )
    ref_outs, ref_final = reference.run(
        name, params, x, mask=mask, initial_state=states, go_backwards=go_backwards
    )
    record_largest(
        "abs difference against the float64 NumPy reference", np.abs(outs - ref_outs).max()
    )
    np.testing.assert_allclose(outs, ref_outs, atol=ATOL, rtol=RTOL)
    for g, r in zip(final, ref_final, strict=True):
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=RTOL)
    # The all-masked row returns its initial state, exactly.
    for g, s in zip(final, states, strict=True):
        np.testing.assert_array_equal(g[2], s[2])


@cells
def test_all_masked_rows_give_zeros_and_finite_gradients(name):
    params, x = make_params(name), make_inputs()
    mask = jnp.zeros((B, T), bool)
    fn = CELLS[name][2]
    np.testing.assert_array_equal(fn(params, x, mask=mask), np.zeros((B, U)))
    grads = jax.grad(lambda p: jnp.sum(fn(p, x, mask=mask, return_sequences=True)))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------- against itself


@cells
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
def test_scan_matches_python_loop_over_cell(name, go_backwards):
    params, x, states = make_params(name), make_inputs(), make_state(name)
    cell = CELLS[name][1]
    carry, ys = as_carry(name, states), []
    steps = range(T - 1, -1, -1) if go_backwards else range(T)
    for t in steps:
        carry, y = cell(params, carry, x[:, t])
        ys.append(y)
    outs, final = run_seq(name, params, x, initial_state=states, go_backwards=go_backwards)
    np.testing.assert_allclose(outs, jnp.stack(ys, axis=1), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(final[0], ys[-1], atol=1e-6, rtol=1e-6)


@cells
def test_last_output_is_last_of_sequence_and_h(name):
    params, x = make_params(name), make_inputs()
    fn = CELLS[name][2]
    last = fn(params, x)
    seq = fn(params, x, return_sequences=True)
    out, h, *_ = fn(params, x, return_state=True)
    assert last.shape == (B, U) and seq.shape == (B, T, U)
    np.testing.assert_array_equal(last, seq[:, -1])
    np.testing.assert_array_equal(out, h)


@cells
def test_return_state_arity(name):
    params, x = make_params(name), make_inputs()
    result = CELLS[name][2](params, x, return_state=True)
    assert len(result) == 1 + CELLS[name][3]


@cells
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_jit_matches_eager(name, masked):
    params, x = make_params(name), make_inputs()
    mask = _mask() if masked else None
    fn = CELLS[name][2]
    eager = fn(params, x, mask=mask, return_sequences=True)
    jitted = jax.jit(lambda p, x, m: fn(p, x, mask=m, return_sequences=True))(params, x, mask)
    np.testing.assert_allclose(jitted, eager, atol=1e-6, rtol=1e-6)


@cells
@pytest.mark.parametrize("unroll", [2, 4, True], ids=["unroll2", "unroll4", "full"])
def test_unroll_matches_rolled(name, unroll):
    params, x, mask = make_params(name), make_inputs(), _mask()
    fn = CELLS[name][2]
    for m in (None, mask):
        rolled = fn(params, x, mask=m, return_sequences=True)
        unrolled = fn(params, x, mask=m, return_sequences=True, unroll=unroll)
        np.testing.assert_allclose(unrolled, rolled, atol=1e-6, rtol=1e-6)


@cells
def test_vmap_over_examples_matches_batch(name):
    params, x = make_params(name), make_inputs()
    fn = CELLS[name][2]
    per_example = jax.vmap(lambda xi: fn(params, xi[None], return_sequences=True)[0])(x)
    np.testing.assert_allclose(per_example, fn(params, x, return_sequences=True), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("sum_each_step", [True, False], ids=["summed_each_step", "summed_after"])
def test_lstm_custom_gradient_matches_autodiff(sum_each_step, monkeypatch):
    """The unmasked LSTM scan uses a hand-written VJP; an all-true mask takes the autodiff
    path. Its weight gradient is summed in the backward scan or after it, by the batch's size
    (``SUM_EACH_STEP_FROM``): both ways give autodiff's gradients. (The CPU's kernel, which
    runs instead where it can, is off here: ``tests/test_lstm_cpu.py`` holds it.)"""
    monkeypatch.setenv("LSTM_JAX_CPU_KERNEL", "0")
    threshold = 0 if sum_each_step else 10**9
    monkeypatch.setattr(lstm_jax.lstm_scan, "SUM_EACH_STEP_FROM", threshold)
    params, x, states = make_params("lstm"), make_inputs(), make_state("lstm")
    weights = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, U)), jnp.float32)

    def loss(params, x, states, mask):
        out, h, c = lstm_jax.lstm(
            params, x, return_sequences=True, return_state=True, initial_state=states, mask=mask
        )
        return jnp.sum(out * weights) + jnp.sum(jnp.sin(h)) + jnp.sum(c**2)

    custom = jax.grad(loss, argnums=(0, 1, 2))(params, x, states, None)
    autodiff = jax.grad(loss, argnums=(0, 1, 2))(params, x, states, jnp.ones((B, T), bool))
    reference.assert_trees_close(custom, autodiff, atol=1e-5, rtol=1e-5)
    # and for reversed sequences, under jit, with unroll
    fn = jax.jit(
        jax.grad(
            lambda p, m: jnp.sum(lstm_jax.lstm(p, x, go_backwards=True, mask=m, unroll=3) ** 2)
        )
    )
    mask = jnp.ones((B, T), bool)
    reference.assert_trees_close(fn(params, None), fn(params, mask), atol=1e-5, rtol=1e-5)
    # and when the loss uses only some outputs (the others' cotangents are symbolic zeros)
    for used in (0, 1, 2):

        def partial_loss(params, mask, used=used):
            outputs = lstm_jax.lstm(
                params, x, return_sequences=True, return_state=True, initial_state=states, mask=mask
            )
            return jnp.sum(jnp.sin(outputs[used]))

        custom = jax.grad(partial_loss)(params, None)
        autodiff = jax.grad(partial_loss)(params, jnp.ones((B, T), bool))
        reference.assert_trees_close(custom, autodiff, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["1", "0"], ids=["cpu_kernel", "scan"])
def test_gru_custom_gradient_matches_autodiff(monkeypatch, kernel):
    """The unmasked GRU runs the CPU kernel (``lstm_cpu.run_gru``) or, with it off, a
    hand-written VJP (``lstm_jax.gru_scan``) below ``CUSTOM_GRADIENT_BELOW`` examples; an
    all-true mask takes the autodiff path through ``gru_cell``: the same values and
    gradients, for every output the loss may use, reversed, under jit and unrolled."""
    monkeypatch.setenv("LSTM_JAX_CPU_KERNEL", kernel)
    assert B < lstm_jax.gru_scan.CUSTOM_GRADIENT_BELOW  # with the kernel off, the VJP runs
    params, x, states = make_params("gru"), make_inputs(), make_state("gru")
    params["bias"] = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3 * U)), jnp.float32)
    weights = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, U)), jnp.float32)
    all_true = jnp.ones((B, T), bool)

    def loss(params, x, states, mask):
        out, h = lstm_jax.gru(
            params, x, return_sequences=True, return_state=True, initial_state=states, mask=mask
        )
        return jnp.sum(out * weights) + jnp.sum(jnp.sin(h))

    custom = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, states, None)
    autodiff = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, states, all_true)
    reference.assert_trees_close(custom, autodiff, atol=1e-5, rtol=1e-5)
    fn = jax.jit(
        jax.grad(lambda p, m: jnp.sum(lstm_jax.gru(p, x, go_backwards=True, mask=m, unroll=3) ** 2))
    )
    reference.assert_trees_close(fn(params, None), fn(params, all_true), atol=1e-5, rtol=1e-5)
    for used in (0, 1):

        def partial_loss(params, mask, used=used):
            outputs = lstm_jax.gru(
                params, x, return_sequences=True, return_state=True, initial_state=states, mask=mask
            )
            return jnp.sum(jnp.sin(outputs[used]))

        custom = jax.grad(partial_loss)(params, None)
        autodiff = jax.grad(partial_loss)(params, all_true)
        reference.assert_trees_close(custom, autodiff, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_gradients_per_device_under_shard_map_match_the_whole_batch(on_two_cpu_devices):
    """Inside ``jax.shard_map`` (its default ``check_vma``), as ``lstm_jax.training`` runs
    them: on two devices, each sequence function's gradient, per device and summed by
    shard_map, equals the whole batch's, with and without a mask and initial states."""
    assert on_two_cpu_devices("shard_map_gradients.py") == ["True"] * 9


@pytest.mark.slow
@pytest.mark.parametrize(
    "x_dtype, p_dtype",
    [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.bfloat16)],
    ids=["bf16_inputs", "bf16_weights", "bf16_both"],
)
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_custom_gradient_mixed_dtypes_match_autodiff_path(name, x_dtype, p_dtype):
    """Mixed precision runs the custom-gradient scan in the promoted dtype, and each gradient
    comes back in its own argument's dtype, as with autodiff (the all-true-mask path)."""
    params = jax.tree.map(lambda a: a.astype(p_dtype), make_params(name))
    x = make_inputs().astype(x_dtype)
    fn = getattr(lstm_jax, name)

    def loss(params, x, mask):
        out = fn(params, x, return_sequences=True, mask=mask)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    (custom_loss, custom), (ref_loss, ref) = (
        grad(params, x, None),
        grad(params, x, jnp.ones((B, T), bool)),
    )
    tol = 1e-5 if x_dtype == p_dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(custom_loss, ref_loss, rtol=tol)
    assert jax.tree.structure(custom) == jax.tree.structure(ref)
    leaves = (jax.tree.leaves(custom), jax.tree.leaves(ref), jax.tree.leaves((params, x)))
    for g, r, a in zip(*leaves, strict=True):
        assert g.dtype == r.dtype == a.dtype
        scale = float(jnp.abs(r.astype(jnp.float32)).max())
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(r, np.float32), atol=tol * scale, rtol=0
        )


@pytest.mark.slow
@cells
def test_gradients_match_finite_differences(name):
    """Checks the whole gradient (custom or autodiff) against float64 finite differences."""
    params32 = make_params(name, input_dim=2, units=3)
    x32 = make_inputs(batch=2, time=4, features=2)
    fn = CELLS[name][2]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params32)
        x = jnp.asarray(np.asarray(x32), jnp.float64)
        check_grads(
            lambda p: jnp.sum(fn(p, x, return_sequences=True) ** 2),
            (params,),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


# ---------------------------------------------------------------- initialisers


def test_lstm_init_follows_keras_defaults():
    p = lstm_jax.init_lstm(jax.random.key(0), 28, 50)
    assert p["kernel"].shape == (28, 200) and p["recurrent_kernel"].shape == (50, 200)
    np.testing.assert_array_equal(p["bias"], np.r_[np.zeros(50), np.ones(50), np.zeros(100)])
    limit = np.sqrt(6 / (28 + 200))  # glorot uniform
    assert float(jnp.abs(p["kernel"]).max()) <= limit
    # orthogonal over the whole [u, 4u] matrix: its rows are orthonormal
    r = np.asarray(p["recurrent_kernel"], np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(50), atol=1e-5)
    no_forget = lstm_jax.init_lstm(jax.random.key(0), 28, 50, unit_forget_bias=False)
    np.testing.assert_array_equal(no_forget["bias"], np.zeros(200))
    assert (
        lstm_jax.init_lstm(jax.random.key(0), 2, 3, dtype=jnp.bfloat16)["kernel"].dtype
        == jnp.bfloat16
    )


# ---------------------------------------------------------------- bad input


@cells
@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (np.ones((T, D), np.float32), {}, "rank 3"),
        (np.ones((B, T, D + 1), np.float32), {}, "features"),
        (np.ones((B, T, D), np.int32), {}, "floating point"),
        (np.ones((B, T, D), np.float32), {"mask": np.ones((B, T + 1), bool)}, "mask must be"),
        (
            np.ones((B, T, D), np.float32),
            {"initial_state": (np.ones((B, U + 1)),) * 2},
            "initial state",
        ),
    ],
    ids=["rank2", "features", "int_inputs", "mask_shape", "state_shape"],
)
def test_bad_input_raises_clear_value_error(name, x, kwargs, message):
    params = make_params(name)
    if "initial_state" in kwargs and name != "lstm":
        kwargs = {"initial_state": kwargs["initial_state"][0]}
    with pytest.raises(ValueError, match=message):
        CELLS[name][2](params, x, **kwargs)


def test_bad_params_and_sizes_raise():
    with pytest.raises(ValueError, match="units must be a positive int"):
        lstm_jax.init_lstm(jax.random.key(0), 3, 0)
    with pytest.raises(ValueError, match="'kernel', 'recurrent_kernel' and 'bias'"):
        lstm_jax.lstm({"kernel": jnp.ones((3, 8))}, jnp.ones((1, 2, 3)))
    gru_params = lstm_jax.init_gru(jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match=r"recurrent_kernel must be \[units, 4 \* units\]"):
        lstm_jax.lstm(gru_params, jnp.ones((1, 2, 3)))


def test_a_cells_unmasked_scan_runs_below_its_batch_limit_only():
    """``Cell.unmasked_scan_below``: from that batch the step's own scan runs instead (the
    built-in cells leave it ``None`` and choose inside their ``unmasked_scan``), with the
    same outputs."""
    gru = recurrent.CELLS["gru"]
    batches = []

    def unmasked_scan(params, xs, carry, unroll):
        batches.append(xs.shape[1])
        return gru.unmasked_scan(params, xs, carry, unroll)

    cell = dataclasses.replace(gru, unmasked_scan=unmasked_scan, unmasked_scan_below=4)
    params = recurrent.init_gru(jax.random.key(0), 3, 5)
    x = jax.random.normal(jax.random.key(1), (4, 6, 3))
    below, at = recurrent.run_cell(cell, params, x[:3]), recurrent.run_cell(cell, params, x)
    assert batches == [3]
    np.testing.assert_allclose(below, at[:3], atol=1e-6)
