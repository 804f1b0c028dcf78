"""``lstm_jax.training.optim``: the optimizer, gradient clipping and the learning rate
schedules, against optax's own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from lstm_jax import training
from lstm_jax.training import optim
from tests import reference


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


def _flat_reference(config):
    """``config``'s optimizer on one flat vector of every parameter (``optax.flatten``)."""
    return optax.flatten(
        optax.chain(optax.clip_by_global_norm(config.clipnorm), optax.adam(1e-3, eps=1e-7))
    )


@pytest.mark.parametrize("large", [False, True])
def test_the_optimizer_equals_one_on_a_flat_vector_and_checkpoints_keep_that_layout(large):
    config = training.Config(clipnorm=1.0)
    rng = np.random.default_rng(0)
    shapes = {"bias": (7,), "kernel": (3, 4), "recurrent": (256 if large else 16, 256)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    tx, flat = optim.make_optimizer(config), _flat_reference(config)
    state, flat_state = tx.init(params), flat.init(params)
    # Without large arrays, the layout is the flat one itself; with, a large array is apart.
    same = jax.tree.structure(state) == jax.tree.structure(flat_state)
    assert same is not large
    for step in range(3):
        grads = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
        updates, state = tx.update(grads, state, params)
        want, flat_state = flat.update(grads, flat_state, params)
        reference.assert_trees_close(updates, want, atol=1e-9, rtol=1e-6)
    train = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    train = train.replace(step=jnp.zeros((), jnp.int32), opt_state=state)
    saved = optim.to_saved(train)
    assert jax.tree.structure(saved.opt_state) == jax.tree.structure(flat_state)
    reference.assert_trees_close(saved.opt_state, flat_state, atol=1e-9, rtol=1e-6)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), train)
    shapes_saved = optim.saved_shapes(jax.tree.map(_with_sharding, abstract))
    assert [a.shape for a in jax.tree.leaves(shapes_saved)] == [
        a.shape for a in jax.tree.leaves(saved)
    ]
    back = optim.from_saved(saved)
    assert jax.tree.structure(back.opt_state) == jax.tree.structure(state)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(train), strict=True):
        np.testing.assert_array_equal(got, want)


def _with_sharding(a):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device)
