"""Trains the same model on the same data in lstm_jax and in each installed peer, side by side.

    python benchmarks/run.py                      # the lesson: LSTM(50), batch 128, 28 x 28
    python benchmarks/run.py --units 256 --batch-size 1024
    python benchmarks/run.py --sequence pixels --train-examples 4096

Each system runs in its own process (so that its peak memory is its own), for ``--epochs``
epochs, and the systems take turns for ``--rounds`` rounds. The table reports the median of
the steady-state epochs (every epoch after a process's first), the first epoch (which
includes compilation) and the seconds JAX spent compiling within it (tracing, lowering and
XLA's compile, as ``jax.monitoring`` reports them), samples per second, peak resident
memory, the test accuracy after training, and each system's time relative to lstm_jax.
Results go to ``benchmarks/results/<name>.json`` and ``.md``.

Peers: Keras 3 ``LSTM`` on its JAX backend (``model.fit``; on a GPU that backend runs it
through cuDNN, ``jax.experimental.rnn.lstm``), Flax linen
``nn.RNN(nn.OptimizedLSTMCell)`` with one jitted optax step per batch, a plain ``lax.scan``
LSTM with autodiff and the whole epoch in one jit, and PyTorch ``nn.LSTM`` when installed.
All use the lesson's recipe: Keras's initialisers, Adam (lr 1e-3, epsilon 1e-7), softmax
cross-entropy, shuffling every epoch.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYSTEMS = ("lstm_jax", "lstm_jax_1dev", "keras_jax", "flax_linen", "plain_scan", "torch")
LABELS = {
    "lstm_jax": "lstm_jax, as train.py runs it (one XLA device per core)",
    "lstm_jax_1dev": "lstm_jax, XLA's default CPU settings (1 device)",
    "keras_jax": "Keras 3 LSTM, JAX backend (model.fit)",
    "flax_linen": "Flax linen nn.RNN(OptimizedLSTMCell), jit per step",
    "plain_scan": "plain lax.scan LSTM, autodiff, whole-epoch jit",
    "torch": "PyTorch nn.LSTM (CPU)",
}


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
        from lstm_jax.reporting import CompileCounter as counter_cls
    times, compiles = [], []
    for epoch in range(1, epochs + 1):
        with counter_cls() as counter:
            start = time.perf_counter()
            run_epoch(epoch)
            times.append(time.perf_counter() - start)
        compiles.append(None if counter is None else counter.seconds)
    return times, compiles


def worker_lstm_jax(args, images, labels, test_images, test_labels):
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from lstm_jax import data, sharding, steps, training

    config = training.Config(
        units=(args.units,),
        batch_size=args.batch_size,
        sequence=args.sequence,
        progress=False,
        seed=args.seed,
    )
    mesh = Mesh(np.array(jax.devices()), ("data",))
    model = steps.make_model(config, 10)
    time_steps, features = data.sequence_shape(images.shape[1:], args.sequence)
    replicated = NamedSharding(mesh, P())
    state = jax.device_put(
        steps.create_train_state(config, model, (time_steps, features)), replicated
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
    return times, compiles, float(sums[1] / sums[2]), {"devices": len(jax.devices())}


worker_lstm_jax_1dev = worker_lstm_jax


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
    return times, compiles, float(accuracy), {}


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
    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    x = torch.from_numpy(sequences(images, args.sequence))
    y = torch.from_numpy(labels.astype(np.int64))
    tx = torch.from_numpy(sequences(test_images, args.sequence))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(x.shape[-1], args.units, batch_first=True)
            self.dense = torch.nn.Linear(args.units, 10)

        def forward(self, xb):
            return self.dense(self.lstm(xb)[0][:, -1])

    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run_epoch(_):
        for idx in torch.randperm(len(y)).split(args.batch_size):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()

    times, compiles = timed_epochs(args.epochs, run_epoch, jax_compiles=False)
    with torch.no_grad():
        pred = torch.cat([model(tx[i : i + 1000]).argmax(-1) for i in range(0, len(tx), 1000)])
    accuracy = float((pred.numpy() == test_labels).mean())
    return times, compiles, accuracy, {"threads": torch.get_num_threads()}


WORKERS = {
    "lstm_jax": worker_lstm_jax,
    "lstm_jax_1dev": worker_lstm_jax_1dev,
    "keras_jax": worker_keras_jax,
    "flax_linen": worker_flax_linen,
    "plain_scan": worker_plain_scan,
    "torch": worker_torch,
}
assert tuple(WORKERS) == SYSTEMS


def run_worker(args) -> None:
    # Before load_data: TFDS imports TensorFlow, which imports Keras, and Keras picks its
    # backend once, at import (left to itself, TensorFlow).
    os.environ["KERAS_BACKEND"] = "jax"
    if args.worker == "lstm_jax":  # what train.py does before JAX starts
        from lstm_jax import cpu

        cpu.limit_malloc_arenas()
        cpu.use_host_cores(cpu.host_device_count(args.batch_size))
    images, labels, test_images, test_labels, source = load_data(args)
    times, compiles, accuracy, extra = WORKERS[args.worker](
        args, images, labels, test_images, test_labels
    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "RESULT "
        + json.dumps(
            {
                "system": args.worker,
                "epoch_seconds": times,
                "compile_seconds": compiles,
                "accuracy": accuracy,
                "peak_mib": peak_mib,
                "examples": len(labels),
                "data": source,
                **extra,
            }
        )
    )


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


def available(system: str) -> bool:
    needs = {"keras_jax": "keras", "torch": "torch"}.get(system)
    return needs is None or importlib.util.find_spec(needs) is not None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--units", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sequence", choices=["rows", "pixels", "permuted"], default="rows")
    p.add_argument(
        "--train-examples", type=int, default=None, help="default: the 48,000 of the lesson"
    )
    p.add_argument(
        "--epochs", type=int, default=3, help="epochs per process (the first includes compiling)"
    )
    p.add_argument("--rounds", type=int, default=2, help="turns each system takes")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name (default from the sizes)")
    p.add_argument(
        "--results-dir",
        default=str(ROOT / "benchmarks" / "results"),
        help="where <name>.json and <name>.md go (default: benchmarks/results)",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0

    asked = args.systems.split(",")
    unknown = [s for s in asked if s not in SYSTEMS]
    if unknown:
        p.error(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if "lstm_jax" not in asked:
        p.error("--systems must include lstm_jax: every time is given relative to it")
    systems = [s for s in asked if available(s)]
    skipped = [s for s in asked if s not in systems]
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = _rounds(args, systems, forwarded)
    if results is None:
        return 1
    rows = _rows(systems, results)
    first_result = results[systems[0]][0]
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_name()}",
        "command": "python benchmarks/run.py " + " ".join(forwarded),
        "units": args.units,
        "batch_size": args.batch_size,
        "sequence": args.sequence,
        "examples_per_epoch": first_result["examples"],
        "data": first_result["data"],
        "epochs_per_process": args.epochs,
        "rounds": args.rounds,
        "skipped": skipped,
        "versions": _versions(),
    }
    name = args.name or f"u{args.units}_b{args.batch_size}_{args.sequence}"
    out_dir = pathlib.Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = markdown(meta, rows)
    (out_dir / f"{name}.md").write_text(table)
    print(table)
    return 0


def _rounds(args, systems: list[str], forwarded: list[str]) -> dict[str, list[dict]] | None:
    """Each system's worker, ``args.rounds`` times in turn, each in a process of its own:
    the results by system, or None (said on standard error) if one failed."""
    results: dict[str, list[dict]] = {s: [] for s in systems}
    for round_ in range(args.rounds):
        for system in systems:
            cmd = [sys.executable, __file__, *forwarded, "--worker", system]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{system} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                return None
            r = json.loads(line[len("RESULT ") :])
            results[system].append(r)
            print(
                f"round {round_ + 1}, {system}: "
                + ", ".join(f"{t:.2f}" for t in r["epoch_seconds"])
                + f" s/epoch, accuracy {r['accuracy']:.4f}",
                flush=True,
            )

    return results


def _rows(systems: list[str], results: dict[str, list[dict]]) -> list[dict]:
    """A row per system: medians over its rounds, and its time relative to lstm_jax's."""
    rows = []
    for system in systems:
        runs = results[system]
        steady = [t for r in runs for t in r["epoch_seconds"][1:]]
        first = statistics.median(r["epoch_seconds"][0] for r in runs)
        compiles = [r["compile_seconds"][0] for r in runs]
        compile_first = None if None in compiles else statistics.median(compiles)
        median = statistics.median(steady)
        rows.append(
            {
                "system": system,
                "label": LABELS[system],
                "seconds_per_epoch": median,
                "samples_per_second": runs[0]["examples"] / median,
                "first_epoch_seconds": first,
                "first_epoch_compile_seconds": compile_first,
                "peak_mib": max(r["peak_mib"] for r in runs),
                "accuracy": statistics.median(r["accuracy"] for r in runs),
                "steady_epochs": steady,
            }
        )
    ours = next(r for r in rows if r["system"] == "lstm_jax")["seconds_per_epoch"]
    for r in rows:
        r["ratio_to_lstm_jax"] = r["seconds_per_epoch"] / ours
    return rows


def markdown(meta, rows) -> str:
    lines = [
        f"LSTM({meta['units']}) + Dense(10), batch {meta['batch_size']}, {meta['sequence']} "
        f"sequences, {meta['examples_per_epoch']:,} {meta['data']} examples per epoch; "
        f"{meta['machine']}; {meta['date']}",
        f"`{meta['command']}`",
        "",
        "| system | s / epoch (median) | samples / s | first epoch (s, incl. compile) "
        "| of which JAX compiling (s) | peak RSS (MiB) | test accuracy | time vs lstm_jax |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        compile_s = r["first_epoch_compile_seconds"]
        lines.append(
            f"| {r['label']} | {r['seconds_per_epoch']:.2f} | {r['samples_per_second']:,.0f} | "
            f"{r['first_epoch_seconds']:.2f} | "
            + ("none (no JAX)" if compile_s is None else f"{compile_s:.2f}")
            + f" | {r['peak_mib']:,.0f} | {r['accuracy']:.2%} | {r['ratio_to_lstm_jax']:.2f}x |"
        )
    if meta["skipped"]:
        lines.append(f"\nNot installed, skipped: {', '.join(meta['skipped'])}.")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("jax", "flax", "optax", "keras", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
