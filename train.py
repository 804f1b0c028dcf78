"""Trains a recurrent classifier on sequential MNIST: ``python train.py`` runs the lesson.

This file only parses flags; the work is in ``lstm_jax.training`` (importable from tests
and notebooks). Flags use Keras's words. Defaults: LSTM(50) then Dense(10), Adam 1e-3,
batch 128, 3 epochs, validation_split 0.2, MNIST read as 28 rows of 28 pixels.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys

from lstm_jax import data, training  # no JAX backend started
from lstm_jax._process import console, cpu, distributed, shutdown
from lstm_jax.training import rundir

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
  python train.py --dataset tiny_shakespeare --workdir runs/shakespeare   a language model
  python train.py --workdir runs/shakespeare --generate "ROMEO:" --length 500 --temperature 0.8
  python train.py --workdir runs/lesson --export lesson.jaxexport   to serve with jax alone
"""


def _settings() -> dict[str, dict]:
    """The flags of ``Config``'s settings: ``add_argument``'s options for each; every default
    is ``Config``'s, and the group each is listed in its kind (``config.settings``).
    ``flag`` names a flag other than ``--setting-name``."""
    return {**_model_and_recipe(), **_data_and_run()}


def _model_and_recipe() -> dict[str, dict]:
    return {
        **{
            "cell": dict(choices=training.CELLS, help="the recurrent layer"),
            "units": dict(
                type=_units,
                metavar="N[,N...]",
                help="units of the recurrent layer; a comma list stacks layers",
            ),
            "bidirectional": dict(
                action="store_true", help="read each sequence both ways (Keras's Bidirectional)"
            ),
            "dropout": dict(
                type=float, metavar="RATE", help="inputs' units dropped in training, as Keras's"
            ),
            "recurrent_dropout": dict(
                type=float, metavar="RATE", help="h's units dropped in training, as Keras's"
            ),
            "embed": dict(type=int, metavar="N", help="a language model's Embedding size"),
        },
        **{
            "epochs": dict(type=int, help="passes over the training set"),
            "batch_size": dict(type=int, help="examples per step"),
            "learning_rate": dict(type=float, help="the step size"),
            "optimizer": dict(choices=training.OPTIMIZERS, help="with Keras's default settings"),
            "seed": dict(type=int, help="seeds the initial weights and the shuffling"),
            "precision": dict(
                choices=training.PRECISIONS,
                help="bfloat16: compute in bfloat16, parameters in float32 (for accelerators)",
            ),
            "clipnorm": dict(
                type=float, metavar="NORM", help="clip the gradients' global norm to NORM"
            ),
            "lr_schedule": dict(
                choices=training.LR_SCHEDULES,
                help="the learning rate over the run (optax's schedules; reduce_on_plateau "
                "halves it after 2 epochs without a lower training loss; cosine and "
                "warmup_cosine are planned over --epochs, which a resumed run then keeps)",
            ),
            "early_stopping": dict(
                type=int,
                metavar="PATIENCE",
                help="stop after PATIENCE epochs without a lower val_loss, keeping the best "
                "epoch's weights",
            ),
        },
    }


def _data_and_run() -> dict[str, dict]:
    return {
        **{
            "dataset": dict(
                help="a TFDS image classification data set (mnist, fashion_mnist, ...), a "
                "FILE.npz in Keras's mnist.npz layout, read without TensorFlow, or text: "
                "tiny_shakespeare or a UTF-8 FILE.txt (a character language model)"
            ),
            "task": dict(
                choices=data.TASKS,
                help="what the run learns (default: the data's; text: next_token, whose "
                "recipe starts from "
                + ", ".join(
                    f"--{k.replace('_', '-')} {_shown(v)}"
                    for k, v in training.TASK_DEFAULTS["next_token"].items()
                )
                + ")",
            ),
            "bptt": dict(
                type=int,
                metavar="STEPS",
                help="a text's windows: the steps backpropagation reaches back through",
            ),
            "windows": dict(
                choices=training.WINDOWS,
                help="streams: the text read as contiguous streams, the state carried from "
                "each window to the next; random: windows in random order, each from zeros",
            ),
            "sequence": dict(
                choices=data.SEQUENCES,
                help="rows: 28 steps of 28 pixels; pixels: 784 steps of 1; permuted: "
                "pixels in one fixed random order",
            ),
            "validation_split": dict(
                type=float,
                help="the fraction at the end of the training set held out, as Keras's",
            ),
            "data_dir": dict(
                help="a TFDS data directory (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)"
            ),
            "download": dict(
                flag="--no-download",
                action="store_false",
                help="never download; fail at once when the data is missing",
            ),
        },
        **{
            "progress": dict(flag="--no-progress", action="store_false", help="no progress bar"),
            "tensorboard": dict(
                action="store_true",
                help="write TensorBoard scalars to WORKDIR/tensorboard (tensorboard --logdir)",
            ),
        },
    }


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def build_parser(*, defaults: bool = True) -> argparse.ArgumentParser:
    """``train.py``'s flags; with ``defaults=False``, a parser that returns only the flags
    given."""
    p = _Parser(
        description="Trains a recurrent classifier on images read as sequences (sequential\n"
        "MNIST by default) and reports its test accuracy, or a character language model\n"
        "of a text, which --generate then writes with. The defaults are the Keras\n"
        "lesson's recipe: LSTM(50) then Dense(10), Adam 1e-3, batch 128, 3 epochs.",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    config = training.Config()
    groups = {kind: p.add_argument_group(kind) for kind in training.KINDS}
    options = _settings()
    for kind in training.KINDS:
        for name in training.settings(kind=kind):
            if name not in options:  # --resume and --distributed: among the flags below
                continue
            flag = options[name].pop("flag", "--" + name.replace("_", "-"))
            default = getattr(config, name) if defaults else argparse.SUPPRESS
            groups[kind].add_argument(flag, dest=name, default=default, **options[name])
    _add_run_flags(groups["run"])
    _add_process_flags(p)
    if defaults:  # of the flags that are not the run's settings (``Config`` has those)
        p.set_defaults(
            cpu_devices=0,
            join_timeout=distributed.JOIN_TIMEOUT_S,
            length=500,
            temperature=1.0,
            generate_seed=0,
            export_platforms="cpu,cuda,tpu",
        )
    return p


def _add_run_flags(run) -> None:
    run.add_argument(
        "--workdir",
        help="where metrics.json, curves.png and the checkpoints go (default: runs/<date-time>)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --workdir from its newest checkpoint, with its settings "
        f"(only {', '.join(map(_flag, training.RESUMABLE[:-1]))} may change; --epochs not "
        "under a cosine schedule)",
    )
    run.add_argument(
        "--evaluate",
        action="store_true",
        help="no training: test the newest checkpoint of the run in --workdir",
    )
    run.add_argument(
        "--generate",
        metavar="PROMPT",
        help="no training: the language model of the run in --workdir writes --length "
        "characters after PROMPT",
    )
    run.add_argument("--length", type=int, help="--generate's characters (default: 500)")
    run.add_argument(
        "--temperature",
        type=float,
        help="--generate's sampling: below 1 safer, above 1 wilder, 0 the likeliest "
        "character each time (default: 1.0)",
    )
    run.add_argument(
        "--top-k", type=int, metavar="K", help="--generate draws among the K likeliest only"
    )
    run.add_argument("--generate-seed", type=int, metavar="SEED", help="--generate's draws")
    run.add_argument(
        "--export",
        metavar="FILE",
        help="no training: write the finished run in --workdir as a jax.export artifact, "
        "FILE (and how to call it, FILE.json), to serve with jax alone",
    )
    run.add_argument(
        "--export-platforms",
        metavar="P,P",
        help="--export's platforms, of cpu, cuda, rocm, tpu (default: cpu,cuda,tpu)",
    )
    run.add_argument(
        "--cpu-devices",
        type=int,
        metavar="N",
        help="on a CPU host, N XLA devices of one core each, the batch split "
        "across them (0: one per core up to 2, the setting measured, as many as divide "
        "the batch, so 2 on a bigger host too, and 1 for an LSTM of 384 units or more; "
        "1: XLA's defaults, one device on every core)",
    )


def _add_process_flags(p) -> None:
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
        "--join-timeout", type=int, metavar="S", help="seconds to wait for all processes to join"
    )
    hosts.add_argument(
        "--distributed",
        action="store_true",
        help="on a cluster JAX detects (SLURM, Open MPI, TPU pods): join its processes "
        "without the three flags above",
    )


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


# The run's settings, as flags: every other flag says how or where this start runs.
_SETTINGS = frozenset(training.settings())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    given = vars(build_parser(defaults=False).parse_args(argv))
    _check_flags(parser, args)
    # One path for the run, in every message: "~" expanded, made absolute, once.
    workdir = None if args.workdir is None else _absolute(args.workdir)
    if str(args.dataset).endswith((".npz", ".txt")):  # a file: the same one from any directory
        args.dataset = _absolute(args.dataset)
        if "dataset" in given:
            given["dataset"] = args.dataset
    try:
        config = _config(parser, args, given, workdir)
    except training.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    made = []
    if workdir is None:
        path, made = rundir.make_default()
        workdir = str(path)
    console.hold_writer_errors()  # a failed checkpoint write: one line, not orbax's threads'
    lstm_units = config.units if config.cell == "lstm" else ()  # its CPU kernel runs
    devices = args.cpu_devices or cpu.host_device_count(config.batch_size, lstm_units=lstm_units)
    cpu.tune_malloc(devices)
    cpu.use_host_cores(devices, lstm_kernel=bool(lstm_units))
    hosts = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed:
        distributed.supervise(*hosts, lambda: _kept(workdir, args.num_processes))
    try:
        with shutdown.exit_on_signal(lambda: _kept(workdir, args.num_processes)):
            if args.evaluate:
                _evaluate(workdir, args)
                return 0
            if args.generate is not None:
                _generate(workdir, args)
                return 0
            if args.export is not None:
                _export(workdir, args)
                return 0
            if args.distributed:
                distributed.initialize(*hosts, timeout=args.join_timeout, restore_signals=True)
            training.train_and_evaluate(config, workdir)
    except distributed.ProcessLost as e:
        distributed.wait_for_verdict()  # JAX's runtime names the lost process meanwhile
        _exit_now(f"error: {e}")
    except training.USER_ERRORS as e:
        message = _with_flags(e) if isinstance(e, training.ConfigError) else str(e)
        if isinstance(e, training.CheckpointError):
            # A failed orbax read or write leaves asyncio tasks that print tracebacks as the
            # interpreter shuts down: end here, the one line said.
            _exit_now(f"error: {message}")
        print(f"error: {message}", file=sys.stderr)
        return 1
    finally:
        rundir.remove_if_empty(made)
    if not args.distributed or args.process_id in (0, None):
        print(f"run files: {workdir}")
    return 0


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses flags that cannot go together, before anything starts."""
    for flag in ("resume", "evaluate", "generate", "export"):
        if getattr(args, flag) not in (None, False) and args.workdir is None:
            parser.error(f"--{flag} needs the --workdir of the run")
    uses = (args.resume, args.evaluate, args.generate is not None, args.export is not None)
    if sum(map(bool, uses)) > 1:
        parser.error("--resume, --evaluate, --generate and --export: give one")
    if args.cpu_devices < 0:
        parser.error(f"--cpu-devices must be 0 (one per core) or more; got {args.cpu_devices}")
    hosts = (args.coordinator_address, args.num_processes, args.process_id)
    args.distributed = args.distributed or any(v is not None for v in hosts)
    if not args.distributed:
        return
    try:
        distributed.check_arguments(*hosts)
    except distributed.DistributedError as e:
        parser.error(_flag_names(str(e)))
    if args.evaluate or args.export is not None:
        what = "--evaluate" if args.evaluate else "--export"
        parser.error(f"{what} runs in one process; drop the several-processes flags")
    if args.workdir is None:
        parser.error(
            "several processes need --workdir: one directory that all of them see (on "
            "several machines, a shared filesystem)"
        )


def _config(parser, args, given: dict, workdir: str | None) -> training.Config:
    """The run's settings: from the flags, or from the run in ``workdir`` (``--resume``,
    with the settings given as changes; ``--evaluate``)."""
    try:
        if args.evaluate or args.generate is not None or args.export is not None:
            extra = sorted(set(given) & _SETTINGS - set(training.settings(evaluate=True)))
            if extra:
                flags = ", ".join("--" + f.replace("_", "-") for f in extra)
                what = "--evaluate" if args.evaluate else "--generate"
                what = "--export" if args.export is not None else what
                parser.error(f"{what} reads the model and settings from the run; drop {flags}")
            return training.resume_config(workdir)
        if args.resume:
            changes = {k: v for k, v in given.items() if k in _SETTINGS}
            changes["distributed"] = args.distributed  # as this start is, not as the run's was
            return training.resume_config(workdir, **changes)
        settings = {k: v for k, v in vars(args).items() if k in _SETTINGS}
        task = args.task or ("next_token" if training.text_task(args.dataset) else "classify")
        for name, value in training.TASK_DEFAULTS.get(task, {}).items():
            if name not in given:  # the task's recipe, where no flag says otherwise
                settings[name] = value
        config = training.Config(**settings)
        config.validate()  # the one place settings are checked, for flags and library alike
        return config
    except training.ConfigError as e:
        parser.error(_with_flags(e))


def _exit_now(line: str) -> None:
    """Ends the process at once with ``line`` on standard error, and status 1."""
    print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _with_flags(e: training.ConfigError) -> str:
    """``e``'s message with its settings named as flags: ``batch_size`` as ``--batch-size``."""
    return e.naming(_flag)


def _flag(setting: str) -> str:
    """The flag of a setting: ``--batch-size`` for ``batch_size``, ``--no-progress`` for
    ``progress``."""
    return _settings().get(setting, {}).get("flag", "--" + setting.replace("_", "-"))


def _flag_names(message: str) -> str:
    """``distributed``'s message with its arguments named as ``train.py``'s flags."""
    for name in ("coordinator_address", "num_processes", "process_id"):
        message = message.replace(name, "--" + name.replace("_", "-"))
    return message


def _kept(workdir: str, num_processes: int | None = None) -> str:
    """What an interrupted run leaves, for the line ``train.py`` ends with."""
    kept = rundir.describe_kept(os.path.join(workdir, rundir.CHECKPOINTS))
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


def _evaluate(workdir: str, args) -> None:
    from lstm_jax.training import runs

    run = runs.load_run(workdir)
    print(f"run: {training.describe_model(run.model)}, checkpoint of epoch {run.epoch}")
    result = run.evaluate("test", data_dir=args.data_dir, download=args.download)
    if run.task == "classify":
        print(
            f"test accuracy: {result['accuracy']:.2%} (loss {result['loss']:.4f}, "
            f"{result['examples']:,} examples)"
        )
        return
    numbers = {f"test_{k}": v for k, v in result.items() if k not in ("split", "examples")}
    line = training.test_line(numbers, training.TASKS[run.task])
    print(f"{line} ({result['examples']:,} examples)")


def _generate(workdir: str, args) -> None:
    from lstm_jax.training import runs

    run = runs.load_run(workdir)
    text = run.generate(
        args.generate,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.generate_seed,
    )
    print(args.generate + text)


def _export(workdir: str, args) -> None:
    from lstm_jax.training import runs

    run = runs.load_run(workdir)
    try:
        description = run.export(args.export, platforms=args.export_platforms.split(","))
    except ValueError as e:  # a platform JAX does not know, or a run not finished
        raise training.ConfigError("export", f"--export: {e}") from e
    names = ", ".join(i["name"] for i in description["inputs"])
    print(f"exported: {args.export} ({', '.join(description['platforms'])}); call({names})")
    print(f"how to call it: {args.export}.json")


if __name__ == "__main__":
    code = main()
    for s in shutdown.SIGNALS:  # the run is over: a late Ctrl-C has nothing to stop
        signal.signal(s, signal.SIG_IGN)
    sys.exit(code)
