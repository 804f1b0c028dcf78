"""``lstm_jax.training.optim``: the optimizer, gradient clipping and the learning rate
schedules, against optax's own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstm_jax import training
from lstm_jax.training import optim


def test_clipnorm_clips_the_global_norm():
    config = training.Config(optimizer="sgd", learning_rate=1.0, clipnorm=0.5)
    tx = optim.make_optimizer(config)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.full(3, 10.0), "b": jnp.full((2, 2), -10.0)}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-6)
    small = jax.tree.map(lambda g: g * 1e-3, grads)
    updates, _ = tx.update(small, tx.init(params), params)  # below the norm: untouched
    np.testing.assert_allclose(updates["a"], -small["a"], rtol=1e-6)


def test_reduce_on_plateau_lowers_the_rate_when_the_loss_stalls():
    config = training.Config(lr_schedule="reduce_on_plateau", optimizer="sgd", epochs=10)
    tx = optim.make_optimizer(config, steps_per_epoch=2)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    rates = []
    for step in range(16):  # a loss that never improves
        _, state = tx.update({"w": jnp.ones(2)}, state, params, value=jnp.float32(1.0))
        rates.append(optim.current_learning_rate(config, state, step, 2))
    assert rates[0] == pytest.approx(1e-3)
    assert rates[-1] < 1e-3 * optim.PLATEAU_FACTOR  # halved, more than once


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine"])
def test_each_schedule_is_optax_s_over_the_run_s_steps(schedule):
    config = training.Config(epochs=4, lr_schedule=schedule, learning_rate=0.01)
    lr = optim.learning_rate_schedule(config, steps_per_epoch=10)
    if schedule == "constant":
        assert lr == 0.01
        return
    if schedule == "cosine":
        want = optax.cosine_decay_schedule(0.01, 40)
    else:
        want = optax.warmup_cosine_decay_schedule(0.0, 0.01, 10, 40)
    for step in (0, 5, 10, 25, 39, 40):
        assert float(lr(step)) == pytest.approx(float(want(step)), abs=1e-9)


@pytest.mark.parametrize("name", training.OPTIMIZERS)
def test_each_optimizer_takes_a_step_down_a_quadratic(name):
    config = training.Config(optimizer=name, learning_rate=0.1)
    tx = optim.make_optimizer(config)
    params = {"w": jnp.array([3.0, -2.0])}
    state = tx.init(params)
    loss = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
    before = float(loss(params))
    for _ in range(3):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < before
    assert not optim.needs_loss(config)
    np.testing.assert_array_equal(np.isfinite(params["w"]), [True, True])
