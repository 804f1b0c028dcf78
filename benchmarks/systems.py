"""Each system of the benchmark (``run.py``), as the worker process that trains it: the
data every system gets, the epoch timing, and one ``worker_<system>`` per system in
``WORKERS``. Each worker returns ``(epoch seconds, compile seconds, test accuracy, extra)``.
"""

from __future__ import annotations

import time

# --------------------------------------------------------------------------------------
# Data: the real MNIST through lstm_jax.data when it is there, else random images
# --------------------------------------------------------------------------------------


def load_data(args):
    import numpy as np

    from lstm_jax import data

    try:
        ds = data.load(args.dataset, data_dir=args.data_dir, validation_split=0.2, download=False)
        train, test, source = ds.train, ds.test, args.dataset
    except data.DataError:
        rng = np.random.default_rng(0)
        train = data.Split(
            rng.integers(0, 256, (48_000, 28, 28, 1), np.uint8),
            rng.integers(0, 10, 48_000).astype(np.int32),
        )
        test = data.Split(train.images[:10_000], train.labels[:10_000])
        source = "random"
    n = min(args.train_examples or len(train), len(train))
    return train.images[:n], train.labels[:n], test.images, test.labels, source


def sequences(images, sequence):
    """uint8 images -> float32 [N, T, F] in [0, 1], as lstm_jax.data.to_sequences."""
    import numpy as np

    from lstm_jax import data

    return np.asarray(data.to_sequences(images, sequence))


# --------------------------------------------------------------------------------------
# Workers: each trains for args.epochs epochs and reports epoch times
# --------------------------------------------------------------------------------------


def timed_epochs(epochs, run_epoch, jax_compiles=True):
    """Runs ``run_epoch(epoch)`` for epochs 1..epochs; returns each one's seconds and the
    seconds JAX spent compiling in it (tracing, lowering, XLA), or None for a system that
    does not use JAX."""
    import contextlib

    counter_cls = contextlib.nullcontext  # no JAX: nothing imported, None per epoch
    if jax_compiles:
        from lstm_jax.training.reporting import CompileCounter as counter_cls
    times, compiles = [], []
    for epoch in range(1, epochs + 1):
        with counter_cls() as counter:
            start = time.perf_counter()
            run_epoch(epoch)
            times.append(time.perf_counter() - start)
        compiles.append(None if counter is None else counter.seconds)
    return times, compiles


def _uses_cudnn(use_cudnn) -> bool:
    """Whether lstm_jax's LSTM runs cuDNN here with ``use_cudnn`` (float32, no mask)."""
    import jax.numpy as jnp

    from lstm_jax import lstm_cudnn

    probe = lstm_cudnn.why_not({"kernel": jnp.zeros((1, 4))}, jnp.zeros((1, 1, 1)), unroll=1)
    return use_cudnn is not False and probe is None


def worker_lstm_jax(args, images, labels, test_images, test_labels, *, use_cudnn="auto"):
    import jax

    from lstm_jax import data, training
    from lstm_jax.training import sharding, steps

    config = training.Config(
        units=(args.units,),
        batch_size=args.batch_size,
        sequence=args.sequence,
        progress=False,
        seed=args.seed,
    )
    mesh = sharding.data_mesh()
    model = steps.make_model(config, 10).clone(use_cudnn=use_cudnn)
    time_steps, features = data.sequence_shape(images.shape[1:], args.sequence)
    state = jax.device_put(
        steps.create_train_state(config, model, (time_steps, features)), sharding.replicated(mesh)
    )
    train = data.Split(images, labels)
    train_epoch, evaluate = steps.make_epoch_fns(config, model, mesh, len(labels))

    def run_epoch(epoch):
        nonlocal state
        order = sharding.epoch_order(args.seed, epoch, len(labels))
        batches = sharding.batches_on_mesh(train, order, args.batch_size, mesh)
        state, sums, _ = train_epoch(state, batches)
        jax.block_until_ready(sums)

    times, compiles = timed_epochs(args.epochs, run_epoch)
    test_batches = sharding.eval_batches(data.Split(test_images, test_labels), config, mesh)
    sums = jax.device_get(evaluate(state.params, test_batches))
    extra = {"devices": len(jax.devices()), "device": jax.devices()[0].device_kind}
    return times, compiles, float(sums[1] / sums[2]), {**extra, "cudnn": _uses_cudnn(use_cudnn)}


worker_lstm_jax_1dev = worker_lstm_jax


def worker_lstm_jax_scan(*args):
    return worker_lstm_jax(*args, use_cudnn=False)


def worker_keras_jax(args, images, labels, test_images, test_labels):
    import keras

    # KERAS_BACKEND is set in run_worker, before TFDS imports TensorFlow, which imports Keras.
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"Keras runs on its {keras.backend.backend()} backend here, not JAX: "
            "KERAS_BACKEND must be 'jax' before anything imports keras"
        )
    keras.utils.set_random_seed(args.seed)
    x, tx = sequences(images, args.sequence), sequences(test_images, args.sequence)
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.LSTM(args.units),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    times, compiles = timed_epochs(
        args.epochs,
        lambda _: model.fit(
            x, labels, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=True
        ),
    )
    accuracy = model.evaluate(tx, test_labels, batch_size=1024, verbose=0)[1]
    return times, compiles, float(accuracy), {"cudnn": _keras_uses_cudnn(model.layers[0])}


def _keras_uses_cudnn(layer) -> bool | None:
    """Whether Keras's JAX backend runs ``layer`` through cuDNN (its own test), or None where
    that test cannot be read."""
    try:
        from keras.src.backend.jax.rnn import cudnn_ok
    except ImportError:
        return None
    cell = layer.cell
    return bool(
        layer.use_cudnn is not False
        and cudnn_ok(cell.activation, cell.recurrent_activation, layer.unroll, cell.use_bias)
    )


def _flax_model(units):
    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.RNN(nn.OptimizedLSTMCell(units))(x)[:, -1]
            return nn.Dense(10, kernel_init=nn.initializers.glorot_uniform())(h)

    return Model()


def worker_flax_linen(args, images, labels, test_images, test_labels):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    x, tx = sequences(images, args.sequence), sequences(test_images, args.sequence)
    model = _flax_model(args.units)
    params = model.init(jax.random.key(args.seed), x[:1])
    opt = optax.adam(1e-3, eps=1e-7)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            logits = model.apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(args.seed)

    def run_epoch(_):
        nonlocal params, opt_state
        order = rng.permutation(len(labels))
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            params, opt_state, loss = step(params, opt_state, x[idx], labels[idx])
        jax.block_until_ready(loss)

    times, compiles = timed_epochs(args.epochs, run_epoch)
    predict = jax.jit(lambda p, xb: jnp.argmax(model.apply(p, xb), -1))
    correct = sum(
        int((np.asarray(predict(params, tx[i : i + 1000])) == test_labels[i : i + 1000]).sum())
        for i in range(0, len(test_labels), 1000)
    )
    return times, compiles, correct / len(test_labels), {}


def _plain_lstm(seed: int, features: int, units: int):
    """``(params, forward)`` of LSTM(units) then Dense(10), written as the textbook does:
    ``lax.scan`` over ``lstm_cell``."""
    import jax
    import jax.numpy as jnp

    from lstm_jax import recurrent

    key_lstm, key_dense = jax.random.split(jax.random.key(seed))
    params = {
        "lstm": recurrent.init_lstm(key_lstm, features, units),
        "dense": {
            "kernel": jax.nn.initializers.glorot_uniform()(key_dense, (units, 10)),
            "bias": jnp.zeros((10,)),
        },
    }

    def forward(p, xb):
        h = jnp.zeros((xb.shape[0], units))
        carry, _ = jax.lax.scan(
            lambda c, x_t: recurrent.lstm_cell(p["lstm"], c, x_t), (h, h), jnp.swapaxes(xb, 0, 1)
        )
        return carry[0] @ p["dense"]["kernel"] + p["dense"]["bias"]

    return params, forward


def worker_plain_scan(args, images, labels, test_images, test_labels):
    """The textbook approach: lax.scan over a cell, autodiff, the whole epoch in one jit."""
    import jax
    import jax.numpy as jnp
    import optax

    from lstm_jax import data

    d = data.sequence_shape(images.shape[1:], args.sequence)[1]
    params, forward = _plain_lstm(args.seed, d, args.units)
    opt = optax.adam(1e-3, eps=1e-7)

    @jax.jit
    def epoch(params, opt_state, images, labels, key):
        steps = labels.shape[0] // args.batch_size
        order = jax.random.permutation(key, labels.shape[0])[: steps * args.batch_size]

        def body(carry, idx):
            params, opt_state = carry
            xb = data.to_sequences(images[idx], args.sequence)
            loss, grads = jax.value_and_grad(
                lambda p: optax.softmax_cross_entropy_with_integer_labels(
                    forward(p, xb), labels[idx]
                ).mean()
            )(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            body, (params, opt_state), order.reshape(steps, args.batch_size)
        )
        return params, opt_state, losses

    opt_state = opt.init(params)
    x, y = jax.device_put(images), jax.device_put(labels)

    def run_epoch(e):
        nonlocal params, opt_state
        params, opt_state, losses = epoch(params, opt_state, x, y, jax.random.key(e))
        jax.block_until_ready(losses)

    times, compiles = timed_epochs(args.epochs, run_epoch)
    tx = data.to_sequences(test_images, args.sequence)
    correct = sum(
        int(
            (
                jnp.argmax(jax.jit(forward)(params, tx[i : i + 1000]), -1)
                == test_labels[i : i + 1000]
            ).sum()
        )
        for i in range(0, len(test_labels), 1000)
    )
    return times, compiles, correct / len(test_labels), {}


def worker_torch(args, images, labels, test_images, test_labels):
    """On a GPU (CUDA), with the data on it: ``nn.LSTM`` is cuDNN's there."""
    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.from_numpy(sequences(images, args.sequence)).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    tx = torch.from_numpy(sequences(test_images, args.sequence)).to(device)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(x.shape[-1], args.units, batch_first=True)
            self.dense = torch.nn.Linear(args.units, 10)

        def forward(self, xb):
            return self.dense(self.lstm(xb)[0][:, -1])

    model = Model().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run_epoch(_):
        for idx in torch.randperm(len(y), device=device).split(args.batch_size):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    times, compiles = timed_epochs(args.epochs, run_epoch, jax_compiles=False)
    with torch.no_grad():
        pred = torch.cat([model(tx[i : i + 1000]).argmax(-1) for i in range(0, len(tx), 1000)])
    accuracy = float((pred.cpu().numpy() == test_labels).mean())
    extra = {"threads": torch.get_num_threads(), "cudnn": device.type == "cuda"}
    if device.type == "cuda":
        extra["device"] = torch.cuda.get_device_name()
    return times, compiles, accuracy, extra


WORKERS = {
    "lstm_jax": worker_lstm_jax,
    "lstm_jax_1dev": worker_lstm_jax_1dev,
    "lstm_jax_scan": worker_lstm_jax_scan,
    "keras_jax": worker_keras_jax,
    "flax_linen": worker_flax_linen,
    "plain_scan": worker_plain_scan,
    "torch": worker_torch,
}
