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

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYSTEMS = (
    "lstm_jax",
    "lstm_jax_1dev",
    "lstm_jax_scan",
    "keras_jax",
    "flax_linen",
    "plain_scan",
    "torch",
)
# The systems, in the order they take turns; each has its worker in ``systems.WORKERS``.
LABELS = {
    "lstm_jax": "lstm_jax, as train.py runs it (one XLA device per core; cuDNN on a GPU)",
    "lstm_jax_1dev": "lstm_jax, XLA's default CPU settings (1 device)",
    "lstm_jax_scan": "lstm_jax, use_cudnn=False (its scan, transposed layout, own gradient)",
    "keras_jax": "Keras 3 LSTM, JAX backend (model.fit)",
    "flax_linen": "Flax linen nn.RNN(OptimizedLSTMCell), jit per step",
    "plain_scan": "plain lax.scan LSTM, autodiff, whole-epoch jit",
    "torch": "PyTorch nn.LSTM",
}


def run_worker(args) -> None:
    from systems import WORKERS, load_data  # beside this file

    assert tuple(WORKERS) == SYSTEMS
    # Before load_data: TFDS imports TensorFlow, which imports Keras, and Keras picks its
    # backend once, at import (left to itself, TensorFlow).
    os.environ["KERAS_BACKEND"] = "jax"
    if args.worker in ("lstm_jax", "lstm_jax_scan"):  # what train.py does before JAX starts
        from lstm_jax._process import cpu

        devices = cpu.host_device_count(args.batch_size)
        cpu.tune_malloc(devices)
        cpu.use_host_cores(devices)
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
    p.add_argument(
        "--systems",
        default=",".join(s for s in SYSTEMS if s != "lstm_jax_scan"),  # the same on a CPU
        help=f"some of {', '.join(SYSTEMS)}",
    )
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name (default from the sizes)")
    p.add_argument(
        "--results-dir",
        default=str(ROOT / "benchmarks" / "results"),
        help="where <name>.json and <name>.md go (default: benchmarks/results)",
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=None,
        help="seconds one system's process may take; past it, that system is left out",
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
    results, failed = _rounds(args, systems, forwarded)
    if not results.get("lstm_jax"):
        return 1
    systems = [s for s in systems if results[s]]
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
        "device": first_result.get("device", "cpu"),
        "skipped": skipped,
        "failed": failed,
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


def _rounds(args, systems: list[str], forwarded: list[str]) -> tuple[dict, dict]:
    """Each system's worker, ``args.rounds`` times in turn, each in a process of its own:
    the results by system, and why each system that failed (or ran past
    ``--worker-timeout``) did, said on standard error as it happens; a failed system takes
    no more turns."""
    results: dict[str, list[dict]] = {s: [] for s in systems}
    failed: dict[str, str] = {}
    for round_ in range(args.rounds):
        for system in [s for s in systems if s not in failed]:
            cmd = [sys.executable, __file__, *forwarded, "--worker", system]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            try:
                out = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=ROOT,
                    timeout=args.worker_timeout,
                )
            except subprocess.TimeoutExpired:
                failed[system] = f"ran past --worker-timeout {args.worker_timeout:g} s"
                print(f"{system}: {failed[system]}", file=sys.stderr)
                continue
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                failed[system] = f"exit {out.returncode}: {last[:300]}"
                print(f"{system} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(line[len("RESULT ") :])
            results[system].append(r)
            print(
                f"round {round_ + 1}, {system}: "
                + ", ".join(f"{t:.2f}" for t in r["epoch_seconds"])
                + f" s/epoch, accuracy {r['accuracy']:.4f}",
                flush=True,
            )
    return results, failed


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
                "cudnn": runs[0].get("cudnn"),
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
        f"{meta['machine']}; device: {meta.get('device', 'cpu')}; {meta['date']}",
        f"`{meta['command']}`",
        "",
        "| system | s / epoch (median) | samples / s | first epoch (s, incl. compile) "
        "| of which JAX compiling (s) | peak RSS (MiB) | test accuracy | cuDNN "
        "| time vs lstm_jax |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        compile_s = r["first_epoch_compile_seconds"]
        cudnn = {True: "yes", False: "no", None: "-"}[r.get("cudnn")]
        lines.append(
            f"| {r['label']} | {r['seconds_per_epoch']:.2f} | {r['samples_per_second']:,.0f} | "
            f"{r['first_epoch_seconds']:.2f} | "
            + ("none (no JAX)" if compile_s is None else f"{compile_s:.2f}")
            + f" | {r['peak_mib']:,.0f} | {r['accuracy']:.2%} | {cudnn} "
            f"| {r['ratio_to_lstm_jax']:.2f}x |"
        )
    if meta["skipped"]:
        lines.append(f"\nNot installed, skipped: {', '.join(meta['skipped'])}.")
    for system, why in meta.get("failed", {}).items():
        lines.append(f"\n{LABELS[system]}: failed, left out ({why}).")
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
