"""On the GPU, before any timing: lstm_jax's LSTM through cuDNN against its scan, outputs and
gradients, one training epoch of the trainer (inside its ``shard_map``) both ways, and the
cuDNN LSTM exported for CUDA (``jax.export``) and served.

    python benchmarks/gpu_check.py [--results-dir DIR]

Matmuls run at full float32 precision here (``jax_default_matmul_precision=highest``, which
also keeps cuDNN off TF32), so both ways compute the same numbers up to rounding. Writes
``gpu_check.md``; exits 1 if a difference exceeds 1e-4. Where cuDNN cannot run (a CPU, in
CI), it says why and compares nothing.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def _largest(a, b) -> float:
    """The largest difference between the arrays of ``a`` and ``b``, each relative to the
    largest magnitude in its array of ``b`` (at least 1): gradients summed over a batch and
    28 steps reach the hundreds."""
    import jax
    import numpy as np

    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(1.0, np.max(np.abs(y))))
        for x, y in pairs
    )


def layer_checks() -> list[tuple[str, float]]:
    """``(case, largest difference)`` of ``lstm`` with ``use_cudnn`` True and False, outputs
    and gradients with respect to parameters and inputs."""
    import jax
    import jax.numpy as jnp

    from lstm_jax import recurrent

    b, t, d, u = 64, 28, 28, 50
    params = recurrent.init_lstm(jax.random.key(0), d, u)
    x = jax.random.normal(jax.random.key(1), (b, t, d))
    state = tuple(jax.random.normal(k, (b, u)) * 0.5 for k in jax.random.split(jax.random.key(2)))
    lengths = jax.random.randint(jax.random.key(3), (b,), 0, t + 1)
    right_padded = jnp.arange(t)[None] < lengths[:, None]
    cases = {
        "forwards": {},
        "go_backwards": {"go_backwards": True},
        "initial state": {"initial_state": state},
        "right-padded mask (lengths 0-28)": {"mask": right_padded},
        "right-padded mask, go_backwards": {"mask": right_padded, "go_backwards": True},
    }
    found = []
    for case, options in cases.items():

        def f(params, x, use_cudnn, options=options):
            out = recurrent.lstm(params, x, return_sequences=True, use_cudnn=use_cudnn, **options)
            return jnp.sum(jnp.sin(out)), out

        grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True), static_argnums=2)
        found.append((case, _largest(grad(params, x, True), grad(params, x, False))))
    return found


def epoch_check() -> tuple[str, float]:
    """One epoch of the trainer's step (whole-epoch jit, ``shard_map`` over the devices),
    the lesson's model on random images, with cuDNN and with the scan."""
    import jax
    import numpy as np

    from lstm_jax import data, training
    from lstm_jax.training import sharding, steps

    config = training.Config(units=(50,), batch_size=128, progress=False)
    rng = np.random.default_rng(0)
    train = data.Split(
        rng.integers(0, 256, (2048, 28, 28, 1), np.uint8),
        rng.integers(0, 10, 2048).astype(np.int32),
    )
    mesh = sharding.data_mesh()
    params = []
    for use_cudnn in (True, False):
        model = steps.make_model(config, 10).clone(use_cudnn=use_cudnn)
        state = jax.device_put(
            steps.create_train_state(config, model, (28, 28)), sharding.replicated(mesh)
        )
        train_epoch, _ = steps.make_epoch_fns(config, model, mesh, len(train))
        batches = sharding.batches_on_mesh(
            train, sharding.epoch_order(0, 1, len(train)), config.batch_size, mesh
        )
        state, _, _ = train_epoch(state, batches)
        params.append(jax.device_get(state.params))
    return "one training epoch (16 steps, Adam), parameters after it", _largest(*params)


def export_check() -> tuple[str, float]:
    """The LSTM through cuDNN exported for CUDA (``jax.export``), loaded back and called,
    against the scan: the one path ``tests/test_lowering.py`` cannot lower on a CPU (its
    lowering asks cuDNN)."""
    import jax

    from lstm_jax import recurrent

    params = recurrent.init_lstm(jax.random.key(0), 28, 50)
    x = jax.random.normal(jax.random.key(1), (64, 28, 28))

    def f(params, x, use_cudnn=True):
        return recurrent.lstm(params, x, return_sequences=True, use_cudnn=use_cudnn)

    exported = jax.export.export(jax.jit(f), platforms=["cuda"])(params, x)
    served = jax.export.deserialize(exported.serialize())
    case = "cuDNN's LSTM exported for CUDA (jax.export), served, against the scan"
    return case, _largest(served.call(params, x), f(params, x, use_cudnn=False))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp

    from lstm_jax import lstm_cudnn

    jax.config.update("jax_default_matmul_precision", "highest")
    device = jax.devices()[0].device_kind
    why = lstm_cudnn.why_not({"kernel": jnp.zeros((1, 4))}, jnp.zeros((1, 1, 1)), unroll=1)
    lines = [f"# cuDNN against the scan, on {device} (jax {jax.__version__})", ""]
    if why is not None:
        lines.append(f"Not compared: cuDNN cannot run here: {why}.")
        ok = True
    else:
        found = [*layer_checks(), epoch_check(), export_check()]
        lines += ["| case | largest difference (relative to the largest value) |", "| --- | --- |"]
        lines += [f"| {case} | {diff:.2e} |" for case, diff in found]
        ok = all(diff <= TOLERANCE for _, diff in found)
        lines += ["", f"All within {TOLERANCE:g}: {'yes' if ok else 'NO'}."]
    text = "\n".join(lines) + "\n"
    out = pathlib.Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
