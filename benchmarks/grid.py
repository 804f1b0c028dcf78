"""The speed grid: lstm_jax against PyTorch and the plain scan at the shapes researchers use.

    python benchmarks/grid.py                     # the whole grid, under 10 minutes on 2 cores
    python benchmarks/grid.py --cells lstm --units 256 --batches 32 --shapes text

Each cell of the grid is one training step (forward, backward, Adam) of a recurrent layer of
``units`` at a ``batch``, on one of three shapes:

- ``rows``: the lesson's images read as 28 steps of 28 features, ``Dense(10)`` on the last;
- ``text``: a character language model's 100-step windows (``Embedding(65, 64)``, the layer,
  ``Dense(65)`` at every step, the state carried from window to window, gradients clipped);
- ``pixels``: the images read as 784 steps of one pixel (units 50 only).

Text and pixels run at batches up to 128 (a language model's; pixels' 784 steps), rows at
every batch.

lstm_jax runs each cell as ``train.py`` runs it (``lstm_jax.training``'s jitted epoch, one XLA
device per core, or one on every core where ``cpu.host_device_count`` chooses it: an LSTM of
384 units or more); ``--systems`` may add ``lstm_jax_scan`` (the LSTM's CPU kernel off) and
``lstm_jax_1dev`` (one device at every cell) to compare; the plain scan is the textbook
``lax.scan`` over ``lstm_jax.cells``' cell with autodiff and the whole epoch in one jit (XLA's
default CPU settings); PyTorch runs ``nn.LSTM`` or ``nn.GRU``. Each system is a process of its
own that stays up for the whole grid; for each cell, each builds and compiles its step, then
the systems take turns timing an epoch of the same random data (``--rounds`` turns; the median
counts), each after a quiet ``QUIET_SECONDS``. ``--bf16`` adds LSTM(256) in bfloat16 on rows
(lstm_jax's ``precision="bfloat16"``, PyTorch's CPU autocast).

Beside the times, the table gives GFLOP/s (the recurrent layer's matrix products: forward
``2 T B G U (D + U)`` for ``G`` gate blocks, the backward twice that) and this machine's
matmul limit, a 1024 x 1024 float32 product in XLA on all cores, measured first. Results go
to ``benchmarks/results/grid.md`` and ``grid.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYSTEMS = ("lstm_jax", "plain_scan", "torch")
# also: lstm_jax_scan (the LSTM's CPU kernel off), lstm_jax_1dev (one device on every core)
EXTRA_SYSTEMS = ("lstm_jax_scan", "lstm_jax_1dev")
LABELS = {
    "lstm_jax": "lstm_jax (train.py's step)",
    "plain_scan": "plain lax.scan",
    "torch": "PyTorch",
    "lstm_jax_scan": "lstm_jax, the scan (LSTM_JAX_CPU_KERNEL=0)",
    "lstm_jax_1dev": "lstm_jax on one device",
}
GATES = {"lstm": 4, "gru": 3}
SHAPES = {"rows": (28, 28), "text": (100, 64), "pixels": (784, 1)}  # (steps, features)
VOCAB = 65
EPOCH_SECONDS = 0.3  # aimed at, for each timed epoch
# Waited before each timed epoch, so that it does not run beside the idle threads of the
# system before it, which spin for a while after its work (PyTorch's OpenMP workers;
# benchmarks/NOTES.md).
QUIET_SECONDS = 0.2


def flops(spec: dict) -> float:
    """The recurrent layer's matmul FLOPs in one training step (forward and backward)."""
    steps, features = SHAPES[spec["shape"]]
    b, u = spec["batch"], spec["units"]
    return 3 * 2 * steps * b * GATES[spec["cell"]] * u * (features + u)


def steps_per_epoch(spec: dict) -> int:
    """Enough steps for about ``EPOCH_SECONDS`` at 100 GFLOP/s: 1 to 40."""
    return max(1, min(40, round(EPOCH_SECONDS * 1e11 / flops(spec))))


def random_data(spec: dict, seed: int = 0):
    """``(inputs, targets)`` of one epoch, NumPy: uint8 images ``[N, 28, 28, 1]`` and labels,
    or token windows ``[N, 100]`` and the next token at every step."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = spec["steps"] * spec["batch"]
    if spec["shape"] == "text":
        tokens = rng.integers(0, VOCAB, (n, SHAPES["text"][0] + 1)).astype(np.int32)
        return tokens[:, :-1], tokens[:, 1:]
    images = rng.integers(0, 256, (n, 28, 28, 1), np.uint8)
    return images, rng.integers(0, 10, n).astype(np.int32)


# --------------------------------------------------------------------------------------
# Workers: each builds a cell's epoch (``build``) and times it (``epoch``)
# --------------------------------------------------------------------------------------


class LstmJax:
    """The cell as ``train.py`` trains it: ``training.steps``' jitted epoch over batches
    placed on the data mesh (one XLA device per core)."""

    def build(self, spec):
        import jax

        from lstm_jax import data, training
        from lstm_jax.training import sharding, steps, tasks

        text = spec["shape"] == "text"
        config = training.Config(
            cell=spec["cell"],
            units=(spec["units"],),
            batch_size=spec["batch"],
            sequence="pixels" if spec["shape"] == "pixels" else "rows",
            precision=spec.get("precision", "float32"),
            task="next_token" if text else "classify",
            clipnorm=5.0 if text else None,
            progress=False,
        )
        x, y = random_data(spec)
        model = steps.make_model(config, VOCAB if text else 10, task=config.task)
        input_shape = data.sequence_shape(x.shape[1:], config.sequence)
        calls = steps.model_calls(model, input_shape)
        self.mesh = mesh = sharding.data_mesh(config.batch_size)
        state = steps.create_train_state(config, model, input_shape)
        self.state = jax.device_put(state, sharding.replicated(mesh))
        self.train_epoch = steps.make_train_epoch(
            config, model, mesh, len(y), None, calls, task=tasks.TASKS[config.task], streams=text
        )
        split = data.Split(x, y)
        if text:
            self.batches = sharding.stream_batches(split, config.batch_size, mesh)
        else:
            order = sharding.epoch_order(0, 1, len(y))
            self.batches = sharding.batches_on_mesh(split, order, config.batch_size, mesh)
        self.epoch()  # compiles

    def epoch(self):
        import jax

        self.state, sums, _ = self.train_epoch(self.state, self.batches)
        jax.block_until_ready(sums)


class PlainScan:
    """The textbook way: ``lax.scan`` over the cell, autodiff, optax's Adam, one jit for the
    whole epoch (``lax.scan`` over its batches)."""

    def build(self, spec):
        import jax
        import jax.numpy as jnp
        import optax

        from lstm_jax import cells, data

        cell, units, text = spec["cell"], spec["units"], spec["shape"] == "text"
        steps_, features = SHAPES[spec["shape"]]
        step_fn = {"lstm": cells.lstm_cell, "gru": cells.gru_cell}[cell]
        init = {"lstm": cells.init_lstm, "gru": cells.init_gru}[cell]
        keys = jax.random.split(jax.random.key(0), 3)
        classes = VOCAB if text else 10
        params = {
            "rnn": init(keys[0], features, units),
            "head": {
                "kernel": jax.nn.initializers.glorot_uniform()(keys[1], (units, classes)),
                "bias": jnp.zeros((classes,)),
            },
        }
        if text:
            params["embed"] = jax.random.uniform(keys[2], (VOCAB, features), minval=-0.05)
        sequence = "pixels" if spec["shape"] == "pixels" else "rows"

        def loss_fn(p, xb, yb, carry):
            xs = p["embed"][xb] if text else data.to_sequences(xb, sequence)
            carry, hs = jax.lax.scan(
                lambda c, x_t: step_fn(p["rnn"], c, x_t), carry, jnp.swapaxes(xs, 0, 1)
            )
            h_out = carry[0] if cell == "lstm" else carry
            if text:
                logits = jnp.swapaxes(hs, 0, 1) @ p["head"]["kernel"] + p["head"]["bias"]
            else:
                logits = h_out @ p["head"]["kernel"] + p["head"]["bias"]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return loss, carry

        opt = optax.chain(optax.clip_by_global_norm(5.0) if text else optax.identity())
        opt = optax.chain(opt, optax.adam(1e-3, eps=1e-7))
        b = spec["batch"]
        zeros = jnp.zeros((b, units))
        carry0 = (zeros, zeros) if cell == "lstm" else zeros

        @jax.jit
        def epoch(params, opt_state, xs, ys):
            def body(c, batch):
                params, opt_state, carry = c
                (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                    params, *batch, carry
                )
                carry = jax.lax.stop_gradient(carry) if text else carry0
                updates, opt_state = opt.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state, carry), loss

            (params, opt_state, _), losses = jax.lax.scan(
                body, (params, opt_state, carry0), (xs, ys)
            )
            return params, opt_state, losses

        x, y = random_data(spec)
        self.xs = jnp.asarray(x.reshape(spec["steps"], b, *x.shape[1:]))
        self.ys = jnp.asarray(y.reshape(spec["steps"], b, *y.shape[1:]))
        self.fn, self.params, self.opt_state = epoch, params, opt.init(params)
        self.epoch()

    def epoch(self):
        import jax

        self.params, self.opt_state, losses = self.fn(self.params, self.opt_state, self.xs, self.ys)
        jax.block_until_ready(losses)


class Torch:
    """``nn.LSTM`` or ``nn.GRU`` (batch first) and a ``Linear`` head, Adam; for text an
    ``Embedding`` and the state carried, detached, from window to window."""

    def build(self, spec):
        import contextlib

        import torch

        torch.manual_seed(0)
        text, (steps_, features) = spec["shape"] == "text", SHAPES[spec["shape"]]
        rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[spec["cell"]]
        self.rnn = rnn_cls(features, spec["units"], batch_first=True)
        self.head = torch.nn.Linear(spec["units"], VOCAB if text else 10)
        modules = [self.rnn, self.head]
        if text:
            self.embed = torch.nn.Embedding(VOCAB, features)
            modules.append(self.embed)
        self.params = [p for m in modules for p in m.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=1e-3, eps=1e-7)
        x, y = random_data(spec)
        b = spec["batch"]
        if text:
            self.xs = torch.from_numpy(x.astype("int64")).reshape(spec["steps"], b, steps_)
            self.ys = torch.from_numpy(y.astype("int64")).reshape(spec["steps"], b, steps_)
        else:
            seq = x.reshape(len(x), *SHAPES[spec["shape"]]).astype("float32") / 255
            self.xs = torch.from_numpy(seq).reshape(spec["steps"], b, steps_, features)
            self.ys = torch.from_numpy(y.astype("int64")).reshape(spec["steps"], b)
        self.text = text
        bf16 = spec.get("precision") == "bfloat16"

        def bf16_autocast():
            return torch.autocast("cpu", dtype=torch.bfloat16)

        self.autocast = bf16_autocast if bf16 else contextlib.nullcontext
        self.epoch()

    def epoch(self):
        import torch

        loss_fn, state = torch.nn.CrossEntropyLoss(), None
        for xb, yb in zip(self.xs, self.ys, strict=True):
            self.opt.zero_grad()
            with self.autocast():
                if self.text:
                    hs, state = self.rnn(self.embed(xb), state)
                    logits = self.head(hs).float()
                    loss = loss_fn(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
                    state = (
                        tuple(s.detach() for s in state)
                        if isinstance(state, tuple)
                        else (state.detach())
                    )
                else:
                    loss = loss_fn(self.head(self.rnn(xb)[0][:, -1]).float(), yb)
            loss.backward()
            if self.text:
                torch.nn.utils.clip_grad_norm_(self.params, 5.0)
            self.opt.step()


def matmul_limit() -> dict:
    """GFLOP/s of a 1024 x 1024 float32 (and bfloat16) matmul in XLA on all cores (median)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for dtype in ("float32", "bfloat16"):
        a = jnp.ones((1024, 1024), dtype)
        f = jax.jit(lambda a: a @ a)
        jax.block_until_ready(f(a))
        times = []
        for _ in range(30):
            start = time.perf_counter()
            jax.block_until_ready(f(a))
            times.append(time.perf_counter() - start)
        out[dtype] = 2 * 1024**3 / statistics.median(times) / 1e9
    return out


def run_worker(system: str) -> None:
    """Serves the coordinator: one JSON request per line on stdin, one answer per line."""
    if system == "lstm_jax_scan":  # the trainer with the LSTM's CPU kernel off
        os.environ["LSTM_JAX_CPU_KERNEL"] = "0"
    if system.startswith("lstm_jax"):  # what train.py does before JAX starts
        from lstm_jax._process import cpu

        one = system == "lstm_jax_1dev"  # an LSTM's cells only
        devices = 1 if one else cpu.host_device_count(32)
        cpu.tune_malloc(devices)
        cpu.use_host_cores(devices, lstm_kernel=one)
    if system == "limit":
        print(json.dumps(matmul_limit()), flush=True)
        return
    workers = {"lstm_jax": LstmJax, "plain_scan": PlainScan, "torch": Torch}
    worker = workers[system if system in workers else "lstm_jax"]()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            start = time.perf_counter()
            if request["op"] == "build":
                worker.build(request["spec"])
            else:
                worker.epoch()
            answer = {"seconds": time.perf_counter() - start}
        except Exception as e:  # the cell is left out, the grid goes on
            answer = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps(answer), flush=True)


# --------------------------------------------------------------------------------------
# The coordinator
# --------------------------------------------------------------------------------------


class Worker:
    def __init__(self, system: str):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", system],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            return {"error": "the worker process ended"}
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def cells_of(args) -> list[dict]:
    specs = []
    for cell in args.cells:
        for shape in args.shapes:
            for units in args.units:
                if shape == "pixels" and units != 50:
                    continue
                for batch in args.batches:
                    if shape in ("text", "pixels") and batch > 128:
                        continue
                    specs.append({"cell": cell, "shape": shape, "units": units, "batch": batch})
    if args.bf16:
        for batch in args.batches:
            specs.append(
                {
                    "cell": "lstm",
                    "shape": "rows",
                    "units": 256,
                    "batch": batch,
                    "precision": "bfloat16",
                }  # fmt: skip
            )
    for spec in specs:
        spec["steps"] = steps_per_epoch(spec)
        spec["devices"] = lstm_jax_devices(spec)
    return specs


def lstm_jax_devices(spec: dict) -> int:
    """The CPU devices ``train.py`` would use for this cell (``cpu.host_device_count``)."""
    from lstm_jax._process import cpu

    units = (spec["units"],) if spec["cell"] == "lstm" else ()
    return cpu.host_device_count(spec["batch"], lstm_units=units)


def run_grid(args) -> dict:
    limit = json.loads(
        subprocess.run(
            [sys.executable, __file__, "--worker", "limit"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout
    )
    specs = cells_of(args)
    # lstm_jax as train.py runs each cell: on one device where it would choose one.
    names = set(args.systems)
    if "lstm_jax" in names and any(spec["devices"] == 1 for spec in specs):
        names.add("lstm_jax_1dev")
    workers = {s: Worker(s) for s in sorted(names)}

    def worker(s: str, spec: dict) -> Worker:
        one = s == "lstm_jax" and spec["devices"] == 1
        return workers["lstm_jax_1dev" if one else s]

    results = []
    try:
        for spec in specs:
            systems = [s for s in args.systems if not (s == "plain_scan" and "precision" in spec)]
            row = {"spec": spec, "build": {}, "seconds": {s: [] for s in systems}, "errors": {}}
            for s in systems:
                answer = worker(s, spec).ask({"op": "build", "spec": spec})
                if "error" in answer:
                    row["errors"][s] = answer["error"]
                else:
                    row["build"][s] = answer["seconds"]
            for _ in range(args.rounds):
                for s in systems:
                    if s not in row["errors"]:
                        time.sleep(QUIET_SECONDS)
                        answer = worker(s, spec).ask({"op": "epoch"})
                        if "error" in answer:
                            row["errors"][s] = answer["error"]
                        else:
                            row["seconds"][s].append(answer["seconds"])
            row["ms_per_step"] = {
                s: 1e3 * statistics.median(t) / spec["steps"]
                for s, t in row["seconds"].items()
                if t
            }
            results.append(row)
            print(line_of(row), flush=True)
    finally:
        for w in workers.values():
            w.close()
    return {"limit_gflops": limit, "cells": results}


def line_of(row) -> str:
    spec, ms = row["spec"], row["ms_per_step"]
    name = f"{spec['cell']} {spec['shape']} U{spec['units']} B{spec['batch']}"
    if "precision" in spec:
        name += " bf16"
    if spec.get("devices") == 1:
        name += " (lstm_jax on 1 device)"
    parts = [f"{s} {t:.2f} ms" for s, t in ms.items()]
    if "torch" in ms and "lstm_jax" in ms:
        parts.append(f"PyTorch/lstm_jax {ms['torch'] / ms['lstm_jax']:.2f}x")
    errors = "".join(f" [{s}: {e}]" for s, e in row["errors"].items())
    return f"{name}: " + ", ".join(parts) + errors


def markdown(meta: dict, grid: dict) -> str:
    limit = grid["limit_gflops"]
    lines = [
        f"{meta['machine']}; {meta['versions']}; {meta['date']}",
        f"`{meta['command']}`",
        "",
        f"Matmul limit (1024 x 1024 in XLA, all cores): {limit['float32']:.0f} GFLOP/s float32, "
        f"{limit['bfloat16']:.0f} bfloat16. Each cell: ms per training step (median of "
        f"{meta['rounds']} epochs), the recurrent layer's GFLOP/s, and PyTorch's time over "
        "lstm_jax's (above 1: lstm_jax is faster). lstm_jax runs on the CPU devices train.py "
        "would choose (`cpu.host_device_count`): one on every core is marked (1 dev).",
        "",
        "| cell | shape | units | batch | lstm_jax ms | GFLOP/s | plain scan ms | PyTorch ms "
        "| GFLOP/s | PyTorch / lstm_jax |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in grid["cells"]:
        spec, ms = row["spec"], row["ms_per_step"]
        gflop = flops(spec) / 1e9

        def cell(system, ms=ms):
            return f"{ms[system]:.2f}" if system in ms else "-"

        def rate(system, ms=ms, gflop=gflop):
            return f"{gflop / ms[system] * 1e3:.0f}" if system in ms else "-"

        ratio = f"{ms['torch'] / ms['lstm_jax']:.2f}x" if {"torch", "lstm_jax"} <= set(ms) else "-"
        name = spec["cell"].upper() + (" bf16" if "precision" in spec else "")
        lines.append(
            f"| {name} | {spec['shape']} | {spec['units']} | {spec['batch']} | {cell('lstm_jax')}"
            f"{' (1 dev)' if spec.get('devices') == 1 and 'lstm_jax' in ms else ''} "
            f"| {rate('lstm_jax')} | {cell('plain_scan')} | {cell('torch')} | {rate('torch')} "
            f"| {ratio} |"
        )
    for row in grid["cells"]:
        for system, error in row["errors"].items():
            lines.append(f"\n{line_of(row).split(':')[0]}, {LABELS[system]}: failed ({error}).")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    def listed(kind):
        return lambda text: [kind(v) for v in text.split(",")]

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=listed(str), default=["lstm", "gru"])
    p.add_argument("--shapes", type=listed(str), default=["rows", "text", "pixels"])
    p.add_argument("--units", type=listed(int), default=[50, 256, 512])
    p.add_argument("--batches", type=listed(int), default=[32, 128, 1024])
    p.add_argument("--systems", type=listed(str), default=list(SYSTEMS))
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of each system per cell")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--name", default="grid", help="results file name")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return 0
    for name, values, allowed in (
        ("cells", args.cells, GATES),
        ("shapes", args.shapes, SHAPES),
        ("systems", args.systems, SYSTEMS + EXTRA_SYSTEMS),
    ):
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise SystemExit(f"--{name}: unknown {unknown}; expected some of {sorted(allowed)}")
    start = time.perf_counter()
    grid = run_grid(args)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import _cpu_name, _versions  # beside this file

    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    meta = {
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores",
        "versions": versions,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python benchmarks/grid.py", *sys.argv[1:]]),
        "rounds": args.rounds,
        "seconds": time.perf_counter() - start,
    }
    out = pathlib.Path(args.results_dir)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, **grid}, indent=1) + "\n")
    (out / f"{args.name}.md").write_text(markdown(meta, grid))
    print(f"{meta['seconds']:.0f} s; written to {out / args.name}.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
