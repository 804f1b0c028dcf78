"""``lstm_jax.training.sharding``: each epoch's order, and a split's batches on the mesh."""

import numpy as np
import pytest

from lstm_jax import data, training
from lstm_jax.training import sharding


def _split(n: int, lengths: bool = False) -> data.Split:
    images = np.arange(n * 4 * 3, dtype=np.float32).reshape(n, 4, 3)
    labels = np.arange(n, dtype=np.int32) % 5
    return data.Split(images, labels, np.full(n, 2, np.int32) if lengths else None)


def test_an_epoch_s_order_depends_on_the_seed_and_the_epoch_only():
    a, b = sharding.epoch_order(3, 1, 100), sharding.epoch_order(3, 1, 100)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(100)) and a.dtype == np.int32
    assert not (a == sharding.epoch_order(3, 2, 100)).all()
    assert not (a == sharding.epoch_order(4, 1, 100)).all()


@pytest.mark.parametrize("lengths", [False, True])
def test_batches_hold_the_examples_in_order_the_last_padded_with_weight_zero(lengths):
    split, mesh = _split(10, lengths), sharding.data_mesh()
    order = np.array([9, 0, 5, 1, 2, 3, 4, 6, 7, 8], np.int32)
    batches = sharding.batches_on_mesh(split, order, 4, mesh)
    assert batches["image"].shape == (3, 4, 4, 3) and batches["label"].shape == (3, 4)
    labels = np.asarray(batches["label"]).ravel()[:10]
    np.testing.assert_array_equal(labels, split.labels[order])
    np.testing.assert_array_equal(
        np.asarray(batches["image"]).reshape(12, 4, 3)[:10], split.images[order]
    )
    np.testing.assert_array_equal(np.asarray(batches["weight"]).ravel(), [1] * 10 + [0] * 2)
    assert ("length" in batches) is lengths


def test_evaluation_reads_every_example_once_in_the_split_s_order():
    split, mesh = _split(2500), sharding.data_mesh()
    config = training.Config(batch_size=128)
    size = sharding.eval_batch_size(config, mesh)
    assert size >= 1024 and size % mesh.size == 0
    batches = sharding.eval_batches(split, config, mesh)
    weight = np.asarray(batches["weight"]).ravel()
    assert weight.sum() == 2500 and (weight[:2500] == 1).all()
    np.testing.assert_array_equal(np.asarray(batches["label"]).ravel()[:2500], split.labels)
