"""The character language model of tiny Shakespeare, lstm_jax against PyTorch, for a budget
of training time: ``python benchmarks/language_model.py``.

lstm_jax trains as ``python train.py --dataset tiny_shakespeare`` does, from its defaults for
the task (``training.TASK_DEFAULTS``) with as many epochs as fit the budget (``--seconds``,
each epoch's time summed, compiling and validation included). PyTorch then trains the same
model (``Embedding -> nn.LSTM -> Linear`` at every step, Keras's initialisers aside), on the
same windows of the same text, with the same recipe (the text as contiguous streams of
``bptt`` steps, the state carried from window to window and detached, Adam with epsilon 1e-7,
the gradients' global norm clipped, the learning rate's cosine decay planned over the epochs
that fit the budget at its own speed), for the same budget. Both are validated after each epoch
on the validation text read the same way (streams, the state carried). The systems run one
after the other, each alone on the machine; the table goes to
``benchmarks/results/language_model.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_lstm_jax(args) -> dict:
    """``train.py`` from its defaults for the task, as a user runs it; its history."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "train.py", "--dataset", "tiny_shakespeare", "--workdir",
            f"{tmp}/run", "--no-progress",
        ]  # fmt: skip
        if args.epochs:
            command += ["--epochs", str(args.epochs)]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"train.py failed:\n{out.stderr[-3000:]}")
        metrics = json.loads(pathlib.Path(f"{tmp}/run/metrics.json").read_text())
    return {
        "config": metrics["config"],
        "params": metrics["params"],
        "epochs": [
            {
                "seconds": h["epoch_seconds"],
                "train_seconds": h["train_seconds"],
                "characters_per_second": h["steps_per_second"],
                "val_loss": h["val_loss"],
            }
            for h in metrics["history"]
        ],
    }


def run_torch(args, config: dict, budget: float) -> dict:
    """The same model, data and recipe in PyTorch, until its epochs' time passes ``budget``."""
    import numpy as np
    import torch

    from lstm_jax import data
    from lstm_jax.training import sharding

    torch.manual_seed(config["seed"])
    torch.set_num_threads(os.cpu_count() or 1)
    ds = data.load("tiny_shakespeare", data_dir=args.data_dir, bptt=config["bptt"])
    batch, units, vocab = config["batch_size"], config["units"], ds.num_classes

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, config["embed"])
            self.lstm = torch.nn.LSTM(config["embed"], units[0], len(units), batch_first=True)
            self.head = torch.nn.Linear(units[-1], vocab)

        def forward(self, ids, state):
            h, state = self.lstm(self.embed(ids), state)
            return self.head(h), state

    def streams(split):
        index, weight = sharding.stream_index(len(split), batch)
        x = torch.from_numpy(split.images[index].astype(np.int64))  # [steps, batch, T]
        y = torch.from_numpy(split.labels[index].astype(np.int64))
        return x, y, torch.from_numpy(weight)

    model = Model()
    train, val = streams(ds.train), streams(ds.validation)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")

    def step(model, opt, x, y, w, state):
        if state is not None:
            state = tuple(s.detach() for s in state)
        logits, state = model(x, state)
        losses = loss_fn(logits.reshape(-1, vocab), y.reshape(-1)).reshape(y.shape)
        loss = (losses * w[:, None]).sum() / (w.sum() * y.shape[1])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config["clipnorm"])
        opt.step()
        return state

    # The epochs that fit the budget at PyTorch's speed (timed on a throwaway copy), for its
    # schedule, as lstm_jax's epochs were chosen to fit it.
    probe = Model()
    probe_opt = torch.optim.Adam(probe.parameters(), lr=config["learning_rate"], eps=1e-7)
    state, start = None, time.perf_counter()
    for k in range(20):
        state = step(probe, probe_opt, train[0][k], train[1][k], train[2][k], state)
    per_epoch = (time.perf_counter() - start) / 20 * len(train[0]) * 1.03  # and validation
    planned = max(1, int(budget // per_epoch))
    total_steps = planned * len(train[0])
    opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], eps=1e-7)
    cosine = config["lr_schedule"] == "cosine"
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (
            0.5 * (1 + math.cos(math.pi * min(k, total_steps) / total_steps)) if cosine else 1.0
        ),
    )

    def validate():
        model.eval()
        total, count, state = 0.0, 0.0, None
        with torch.no_grad():
            for x, y, w in zip(*val, strict=True):
                logits, state = model(x, state)
                losses = loss_fn(logits.reshape(-1, vocab), y.reshape(-1)).reshape(y.shape)
                total += float((losses * w[:, None]).sum())
                count += float(w.sum()) * y.shape[1]
        model.train()
        return total / count

    epochs = []
    for _ in range(planned):
        start, state = time.perf_counter(), None
        for x, y, w in zip(*train, strict=True):
            state = step(model, opt, x, y, w, state)
            schedule.step()
        train_seconds = time.perf_counter() - start
        val_loss = validate()
        seconds = time.perf_counter() - start
        characters = float(train[2].sum()) * config["bptt"]
        epochs.append(
            {
                "seconds": seconds,
                "train_seconds": train_seconds,
                "characters_per_second": characters / train_seconds,
                "val_loss": val_loss,
            }
        )
        print(f"torch epoch {len(epochs)}: val_loss {val_loss:.4f}, {seconds:.1f} s", flush=True)
    return {"torch": torch.__version__, "planned_epochs": planned, "epochs": epochs}


def _at(epochs: list[dict], budget: float) -> tuple[int, float, float]:
    """``(epochs, seconds, val_loss)`` of the last epoch that ends within ``budget``."""
    spent, done = 0.0, (0, 0.0, float("nan"))
    for n, e in enumerate(epochs, 1):
        spent += e["seconds"]
        if spent <= budget * 1.02:  # an epoch's time is noisy: 2% of slack
            done = (n, spent, e["val_loss"])
    return done


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def table(jax_result: dict, torch_result: dict, budget: float) -> str:
    config = jax_result["config"]
    rows = []
    for name, result in (("lstm_jax (train.py)", jax_result), ("PyTorch nn.LSTM", torch_result)):
        epochs = result["epochs"]
        n, spent, loss = _at(epochs, budget)
        steady = [e["characters_per_second"] for e in epochs[1:]] or [
            epochs[0]["characters_per_second"]
        ]
        rows.append(
            f"| {name} | {_median(steady):,.0f} | {n} | {spent:.0f} | {loss:.4f} | "
            f"{min(e['val_loss'] for e in epochs):.4f} |"
        )
    units = ",".join(map(str, config["units"]))
    return "\n".join(
        [
            f"Tiny Shakespeare, Embedding({config['embed']}) -> {config['cell'].upper()}({units}) "
            f"-> Dense(65) at every step ({jax_result['params']:,} parameters), batch "
            f"{config['batch_size']} streams of {config['bptt']} characters with the state "
            f"carried, Adam {config['learning_rate']:g}, clipnorm {config['clipnorm']:g}; "
            f"budget {budget:.0f} s of epochs (compiling and validation included). "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d')}.",
            "",
            "| system | characters / s (steady epochs, median) | epochs within the budget | "
            "seconds | validation nats / character | best validation nats / character |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=180.0, help="the budget of training time")
    p.add_argument("--epochs", type=int, help="lstm_jax's epochs (default: train.py's)")
    p.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR"))
    p.add_argument("--name", default="language_model")
    args = p.parse_args()
    jax_result = run_lstm_jax(args)
    print("lstm_jax:", json.dumps(jax_result["epochs"]), flush=True)
    torch_result = run_torch(args, jax_result["config"], args.seconds)
    text = table(jax_result, torch_result, args.seconds)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.name}.md").write_text(text + "\n")
    (out / f"{args.name}.json").write_text(
        json.dumps({"lstm_jax": jax_result, "torch": torch_result}, indent=1) + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
