"""The lesson's compiled epoch as a digest: ``python benchmarks/epoch_digest.py``.

Builds the lesson's ``train_epoch`` (LSTM(50) + Dense(10), batch 128, 48,000 examples) on 2
CPU devices, compiles it for fake batches of the real shapes, and prints the sha256 of
XLA's compiled program text with source metadata and ``stack_frame_id``s stripped, with the
``psum_invariant``/``psum`` naming made one: the same digest is the same program. Runs
against this checkout's lstm_jax, whichever layout it has (for comparing commits).
"""

import hashlib
import os
import re

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

try:  # the layout from issue 44 on
    from lstm_jax.data import Split  # noqa: E402
    from lstm_jax.training import Config, sharding, steps  # noqa: E402
except ImportError:  # before it
    from lstm_jax.config import Config  # noqa: E402

    from lstm_jax import sharding, steps  # noqa: E402
    from lstm_jax.data import Split  # noqa: E402


def main() -> None:
    config = Config()
    mesh = sharding.data_mesh(config.batch_size)
    model = steps.make_model(config, 10)
    n = 48_000
    train_epoch = steps.make_epoch_fns(config, model, mesh, n)[0]
    state = sharding.place_replicated(steps.create_train_state(config, model, (28, 28)), mesh)
    split = Split(np.zeros((n, 28, 28, 1), np.uint8), np.zeros(n, np.int32))
    order = np.arange(n)
    batches = sharding.batches_on_mesh(split, order, config.batch_size, mesh)
    text = train_epoch.lower(state, batches).compile().as_text()
    print(f"{len(program(text)):,} characters, sha256 {digest(text)}; {jax.devices()}")


def program(text: str) -> str:
    """The compiled module's instructions: the source-location tables (``FileNames`` to
    ``StackFrames``, each a block ending with an empty line), each instruction's
    ``metadata`` and ``stack_frame_id`` dropped."""
    blocks = text.split("\n\n")
    tables = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
    text = "\n\n".join(b for b in blocks if not b.lstrip().startswith(tables))
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    text = re.sub(r",? ?stack_frame_id=\d+", "", text)
    return text.replace("psum_invariant", "psum")


def digest(text: str) -> str:
    return hashlib.sha256(program(text).encode()).hexdigest()[:16]


if __name__ == "__main__":
    main()
