"""The benchmark runs end to end at a tiny size: each JAX system trains, and the table says
what each measured. (Speed is never asserted: the figures are for people to read.)"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

JAX_SYSTEMS = ("lstm_jax", "keras_jax", "flax_linen", "plain_scan")


def test_benchmark_trains_each_jax_system_and_writes_its_table(tmp_path):
    # As a user runs it: Keras's backend left for the benchmark to choose.
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS")}
    command = [
        sys.executable,
        "benchmarks/run.py",
        *("--train-examples", "512", "--rounds", "1", "--epochs", "2"),
        *("--systems", ",".join(JAX_SYSTEMS), "--results-dir", str(tmp_path), "--name", "t"),
    ]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]

    rows = {r["system"]: r for r in json.loads((tmp_path / "t.json").read_text())["rows"]}
    assert set(rows) == set(JAX_SYSTEMS)
    for system, row in rows.items():
        assert len(row["steady_epochs"]) == 1, system
        assert 0 < row["accuracy"] <= 1, system
        # Every system compiles with JAX in its first epoch; Keras on another backend would
        # compile nothing through JAX (the worker refuses to run so, too).
        assert row["first_epoch_compile_seconds"] > 0, system
    assert rows["lstm_jax"]["ratio_to_lstm_jax"] == 1
    table = (tmp_path / "t.md").read_text()
    assert "| Keras 3 LSTM, JAX backend (model.fit) |" in table
    assert "of which JAX compiling (s)" in table


@pytest.mark.parametrize(
    "systems, message",
    [("torch", "must include lstm_jax"), ("lstm_jax,tensorflow", "unknown tensorflow")],
)
def test_systems_that_cannot_be_compared_are_refused(systems, message):
    command = [sys.executable, "benchmarks/run.py", "--systems", systems]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr, out.stderr
