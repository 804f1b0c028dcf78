"""Trains a recurrent classifier on sequential MNIST: ``python train.py`` runs the lesson.

This file only parses flags; the work is in ``lstm_jax.training`` (importable from tests
and notebooks). Flags use Keras's words. Defaults: LSTM(50) then Dense(10), Adam 1e-3,
batch 128, 3 epochs, validation_split 0.2, MNIST read as 28 rows of 28 pixels.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TFDS's TensorFlow: errors only


def _units(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(u) for u in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int or a comma list such as 128,64; got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cell", choices=["lstm", "gru", "simple_rnn"], default="lstm")
    p.add_argument(
        "--units", type=_units, default=(50,), help="one int, or a comma list for stacked layers"
    )
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=["adam", "sgd", "rmsprop", "adamw"], default="adam")
    p.add_argument(
        "--dataset",
        default="mnist",
        help="a TFDS image classification set: mnist, fashion_mnist, ...",
    )
    p.add_argument(
        "--sequence",
        choices=["rows", "pixels", "permuted"],
        default="rows",
        help="rows: 28 steps x 28; pixels: 784 x 1; permuted: pixels in a fixed random order",
    )
    p.add_argument("--validation-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-dir",
        default=None,
        help="a TFDS data directory (default: TFDS's own, or TFDS_DATA_DIR)",
    )
    p.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        help="never let TFDS download; fail at once if the data is missing",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="where metrics.json, curves.png and checkpoints go (default: runs/<time>)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --workdir"
    )
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16: compute in bfloat16, parameters in float32 (for accelerators)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (several hosts)",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        help="on a CPU host, split it into this many XLA devices, one core each, for data "
        "parallelism (default 0: one per core, as many as divide the batch; 1: one device "
        "using every core, as XLA's default)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.workdir is None:
        parser.error("--resume needs the --workdir of the run to continue")
    workdir = args.workdir or os.path.join(
        "runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    cpu_devices = args.cpu_devices
    del args.workdir, args.cpu_devices
    from lstm_jax import cpu, training  # import JAX but start no backend

    config = training.Config(**vars(args))
    try:
        config.validate()  # the one place settings are checked, for flags and library alike
    except training.ConfigError as e:
        parser.error(str(e))
    cpu.use_host_cores(cpu_devices or cpu.host_device_count(config.batch_size))
    try:
        training.train_and_evaluate(config, workdir)
    except training.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted; the checkpoints of finished epochs are kept (--resume)", file=sys.stderr
        )
        return 130
    print(f"run files: {os.path.abspath(workdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
