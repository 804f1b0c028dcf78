"""Trains a recurrent classifier on sequential MNIST: ``python train.py`` runs the lesson.

This file only parses flags; the work is in ``lstm_jax.training`` (importable from tests
and notebooks). Flags use Keras's words. Defaults: LSTM(50) then Dense(10), Adam 1e-3,
batch 128, 3 epochs, validation_split 0.2, MNIST read as 28 rows of 28 pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import signal
import sys

from lstm_jax import cpu, data, distributed, shutdown, training  # no JAX backend started

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TFDS's TensorFlow: errors only


def _units(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(u) for u in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int or a comma list such as 128,64; got {text!r}"
        ) from None


EXAMPLES = """\
examples:
  python train.py                                   the lesson: LSTM(50), 3 epochs on MNIST
  python train.py --cell gru                        a GRU instead of the LSTM
  python train.py --units 128,64 --bidirectional    two stacked bidirectional LSTMs
  python train.py --dataset fashion_mnist --epochs 10
  python train.py --workdir runs/lesson --resume --epochs 6   continue a run
  python train.py --workdir runs/lesson --evaluate  test a finished run again
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        description="Trains a recurrent classifier on images read as sequences (sequential\n"
        "MNIST by default) and reports its test accuracy. The defaults are the Keras\n"
        "lesson's recipe: LSTM(50) then Dense(10), Adam 1e-3, batch 128, 3 epochs.",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    model = p.add_argument_group("model")
    model.add_argument("--cell", choices=training.CELLS, default="lstm", help="the recurrent layer")
    model.add_argument(
        "--units",
        type=_units,
        default=(50,),
        metavar="N[,N...]",
        help="units of the recurrent layer; a comma list stacks layers",
    )
    model.add_argument(
        "--bidirectional",
        action="store_true",
        help="read each sequence both ways (Keras's Bidirectional)",
    )
    recipe = p.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=int, default=3, help="passes over the training set")
    recipe.add_argument("--batch-size", type=int, default=128, help="examples per step")
    recipe.add_argument("--learning-rate", type=float, default=1e-3, help="the step size")
    recipe.add_argument(
        "--optimizer",
        choices=training.OPTIMIZERS,
        default="adam",
        help="with Keras's default settings",
    )
    recipe.add_argument(
        "--seed", type=int, default=0, help="seeds the initial weights and the shuffling"
    )
    recipe.add_argument(
        "--precision",
        choices=training.PRECISIONS,
        default="float32",
        help="bfloat16: compute in bfloat16, parameters in float32 (for accelerators)",
    )
    data_flags = p.add_argument_group("data")
    data_flags.add_argument(
        "--dataset",
        default="mnist",
        help="a TFDS image classification data set: mnist, fashion_mnist, ...",
    )
    data_flags.add_argument(
        "--sequence",
        choices=data.SEQUENCES,
        default="rows",
        help="rows: 28 steps of 28 pixels; pixels: 784 steps of 1; permuted: "
        "pixels in one fixed random order",
    )
    data_flags.add_argument(
        "--validation-split",
        type=float,
        default=0.2,
        help="the fraction at the end of the training set held out, as Keras's",
    )
    data_flags.add_argument(
        "--data-dir",
        default=None,
        help="a TFDS data directory (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    data_flags.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        help="never download; fail at once when the data is missing",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--workdir",
        default=None,
        help="where metrics.json, curves.png and the checkpoints go (default: runs/<date-time>)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --workdir from its newest checkpoint, with its settings "
        "(only --epochs, --learning-rate, --no-progress, --data-dir, --no-download may change)",
    )
    run.add_argument(
        "--evaluate",
        action="store_true",
        help="no training: test the newest checkpoint of the run in --workdir",
    )
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        metavar="N",
        help="on a CPU host, N XLA devices of one core each, the batch split "
        "across them (0: one per core up to 2, the setting measured, as many as divide "
        "the batch, so 2 on a bigger host too; 1: XLA's defaults, one device on every core)",
    )
    hosts = p.add_argument_group(
        "several processes (one per host, or per accelerator), as one run",
        "Start every process with the same flags and --workdir (a directory all of them\n"
        "see), each with its own --process-id; the batch is split across all devices.",
    )
    hosts.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        help="where process 0 runs the coordinator that the others join",
    )
    hosts.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process: 0 to N-1")
    hosts.add_argument(
        "--join-timeout",
        type=int,
        default=distributed.JOIN_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for all processes to join",
    )
    hosts.add_argument(
        "--distributed",
        action="store_true",
        help="on a cluster JAX detects (SLURM, Open MPI, TPU pods): join its processes "
        "without the three flags above",
    )
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, not the usage block: what is wrong, and where the flags are listed."""
        self.exit(2, f"error: {message} (python train.py --help lists the flags)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, and the examples as written."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        if isinstance(action.default, tuple):
            return f"{action.help} (default: {','.join(map(str, action.default))})"
        return super()._get_help_string(action)


# Flags that --resume and --evaluate take besides the run's own settings.
_RUN_FLAGS = (
    "workdir",
    "resume",
    "evaluate",
    "cpu_devices",
    "coordinator_address",
    "num_processes",
    "process_id",
    "join_timeout",
)
_EVALUATE_FLAGS = (*_RUN_FLAGS, "data_dir", "download", "progress")


def _given(argv) -> dict:
    """The flags on the command line, without defaults."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("resume", "evaluate"):
        if getattr(args, flag) and args.workdir is None:
            parser.error(f"--{flag} needs the --workdir of the run")
    if args.resume and args.evaluate:
        parser.error("--resume and --evaluate: give one")
    if args.cpu_devices < 0:
        parser.error(f"--cpu-devices must be 0 (one per core) or more; got {args.cpu_devices}")
    given = _given(argv if argv is not None else sys.argv[1:])
    # One path for the run, in every message: "~" expanded, made absolute, once.
    workdir = None if args.workdir is None else _absolute(args.workdir)
    hosts = (args.coordinator_address, args.num_processes, args.process_id)
    args.distributed = args.distributed or any(v is not None for v in hosts)
    if args.distributed:
        try:
            distributed.check_arguments(*hosts)
        except distributed.DistributedError as e:
            parser.error(_flag_names(str(e)))
        if args.evaluate:
            parser.error("--evaluate runs in one process; drop the several-processes flags")
        if workdir is None:
            parser.error(
                "several processes need --workdir: one directory that all of them see (on "
                "several machines, a shared filesystem)"
            )
    try:
        if args.evaluate:
            extra = sorted(set(given) - set(_EVALUATE_FLAGS))
            if extra:
                flags = ", ".join("--" + f.replace("_", "-") for f in extra)
                parser.error(f"--evaluate reads the model and settings from the run; drop {flags}")
            config = training.resume_config(workdir)
        elif args.resume:
            changes = {k: v for k, v in given.items() if k not in _RUN_FLAGS}
            changes["distributed"] = args.distributed  # as this start is, not as the run's was
            config = training.resume_config(workdir, **changes)
        else:
            config = training.Config(**{k: v for k, v in vars(args).items() if k not in _RUN_FLAGS})
            config.validate()  # the one place settings are checked, for flags and library alike
    except training.ConfigError as e:
        parser.error(e.with_flag())
    except training.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    workdir = workdir or _absolute(_new_workdir())
    cpu.limit_malloc_arenas()
    cpu.use_host_cores(args.cpu_devices or cpu.host_device_count(config.batch_size))
    if args.distributed:
        distributed.supervise(*hosts, lambda: _kept(workdir, args.num_processes))
    try:
        with shutdown.exit_on_signal(lambda: _kept(workdir, args.num_processes)):
            if args.evaluate:
                _evaluate(workdir, args)
                return 0
            if args.distributed:
                distributed.initialize(*hosts, timeout=args.join_timeout)
            training.train_and_evaluate(config, workdir)
    except distributed.ProcessLost as e:
        distributed.wait_for_verdict()  # JAX's runtime names the lost process meanwhile
        print(f"error: {e}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except training.USER_ERRORS as e:
        message = e.with_flag() if isinstance(e, training.ConfigError) else str(e)
        print(f"error: {message}", file=sys.stderr)
        if isinstance(e, training.CheckpointError):
            # A failed orbax read or write leaves asyncio tasks that print tracebacks as the
            # interpreter shuts down: end here, the one line said.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    finally:
        if args.workdir is None:
            _remove_if_unused(workdir)
    if not args.distributed or args.process_id in (0, None):
        print(f"run files: {workdir}")
    return 0


def _flag_names(message: str) -> str:
    """``distributed``'s message with its arguments named as ``train.py``'s flags."""
    for name in ("coordinator_address", "num_processes", "process_id"):
        message = message.replace(name, "--" + name.replace("_", "-"))
    return message


def _kept(workdir: str, num_processes: int | None = None) -> str:
    """What an interrupted run leaves, for the line ``train.py`` ends with."""
    kept = training.kept_checkpoints(os.path.join(workdir, "checkpoints"))
    if kept.startswith("No "):
        return f"{kept} (no epoch had finished)"
    if num_processes:
        return (
            f"{kept} Continue with --resume, all {num_processes} processes started again "
            "with their flags."
        )
    return f"{kept} Continue with: python train.py --workdir {workdir} --resume"


def _absolute(workdir: str) -> str:
    return str(pathlib.Path(workdir).expanduser().resolve())


def _new_workdir() -> str:
    """``runs/<date-time>``, made here so that no other run can take the same name (a
    second run in the same second gets ``-2``, and so on)."""
    base = os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    with contextlib.suppress(FileExistsError):
        os.mkdir("runs")
        _made_runs.append(os.path.abspath("runs"))
    for n in range(1, 1000):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free workdir name next to {base}")


_made_runs: list[str] = []  # ``runs/``, when ``_new_workdir`` made it


def _remove_if_unused(workdir: str) -> None:
    """The default workdir, and ``runs/`` if this run made it, removed again if the run
    left them empty (it was refused before training)."""
    for path in (workdir, *_made_runs):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _evaluate(workdir: str, args) -> None:
    from lstm_jax import runs

    run = runs.load_run(workdir)
    print(f"run: {training.describe_model(run.model)}, checkpoint of epoch {run.epoch}")
    result = run.evaluate("test", data_dir=args.data_dir, download=args.download)
    print(
        f"test accuracy: {result['accuracy']:.2%} (loss {result['loss']:.4f}, "
        f"{result['examples']:,} examples)"
    )


if __name__ == "__main__":
    code = main()
    for s in shutdown.SIGNALS:  # the run is over: a late Ctrl-C has nothing to stop
        signal.signal(s, signal.SIG_IGN)
    sys.exit(code)
