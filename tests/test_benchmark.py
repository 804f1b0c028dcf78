"""The benchmark runs end to end at a tiny size: each JAX system trains, and the table says
what each measured. (Speed is never asserted: the figures are for people to read.)"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

JAX_SYSTEMS = ("lstm_jax", "keras_jax", "flax_linen", "plain_scan")


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_grid_times_every_cell_in_each_jax_system(tmp_path):
    """``benchmarks/grid.py`` at a tiny size: every cell (LSTM and GRU; rows, a language
    model's text and pixels) builds and is timed in each system, and the table has its row.
    lstm_jax runs an LSTM of 384 units on one device, as train.py would, and says so."""
    command = [
        sys.executable,
        "benchmarks/grid.py",
        *("--units", "50,384", "--batches", "4", "--rounds", "2", "--no-bf16"),
        *("--systems", "lstm_jax,plain_scan", "--results-dir", str(tmp_path), "--name", "g"),
    ]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    grid = json.loads((tmp_path / "g.json").read_text())
    cells = [(c["spec"]["cell"], c["spec"]["shape"], c["spec"]["units"]) for c in grid["cells"]]
    assert cells == [
        (c, s, u) for c in ("lstm", "gru") for s in ("rows", "text", "pixels") for u in (50, 384)
        if s != "pixels" or u == 50
    ]  # fmt: skip
    for cell in grid["cells"]:
        assert not cell["errors"], cell
        assert set(cell["ms_per_step"]) == {"lstm_jax", "plain_scan"}
        assert all(len(t) == 2 for t in cell["seconds"].values())
        one_device = cell["spec"]["cell"] == "lstm" and cell["spec"]["units"] == 384
        assert cell["spec"]["devices"] == (1 if one_device else 2)
    assert grid["limit_gflops"]["float32"] > 0
    table = (tmp_path / "g.md").read_text()
    assert "| LSTM | rows | 384 | 4 | " in table and " (1 dev) |" in table
    assert "| GRU | rows | 384 | 4 |" in table and "| GRU | pixels | 50 | 4 |" in table


@pytest.mark.slow
@pytest.mark.parametrize(
    "systems, message",
    [("torch", "must include lstm_jax"), ("lstm_jax,tensorflow", "unknown tensorflow")],
)
def test_systems_that_cannot_be_compared_are_refused(systems, message):
    command = [sys.executable, "benchmarks/run.py", "--systems", systems]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_at_tiny_sizes(tmp_path):
    """``benchmarks/gpu.sh`` as on the GPU machine, from an npz of random images, with
    ``GPU_SMOKE=1`` (tiny sizes, lstm_jax alone): every step ends well and writes its file."""
    gpu_dir, results = tmp_path / ".gpu", tmp_path / "results"
    gpu_dir.mkdir()
    rng = np.random.default_rng(0)
    np.savez_compressed(
        gpu_dir / "mnist.npz",
        x_train=rng.integers(0, 256, (512, 28, 28), np.uint8),
        y_train=rng.integers(0, 10, 512).astype(np.uint8),
        x_test=rng.integers(0, 256, (128, 28, 28), np.uint8),
        y_test=rng.integers(0, 10, 128).astype(np.uint8),
    )
    env = {
        **os.environ,
        "GPU_SMOKE": "1",
        "GPU_DIR": str(gpu_dir),
        "RESULTS_DIR": str(results),
        "PYTHON": sys.executable,
    }
    out = subprocess.run(
        ["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    steps = (results / "gpu_steps.md").read_text()
    assert out.returncode == 0, steps + out.stdout[-3000:] + out.stderr[-3000:]
    for step in ("check", "lesson", "u256_b1024", "pixels784", "train", "export"):
        assert f"| {step} | 0 |" in steps
    assert (
        "Not compared: cuDNN cannot run here: there is no GPU here"
        in (results / "gpu_check.md").read_text()
    )
    for table in ("gpu_lesson", "gpu_u256_b1024", "gpu_pixels784"):
        text = (results / f"{table}.md").read_text()
        assert "examples per epoch" in text and "mnist.npz" in text, text
        assert "| lstm_jax, use_cudnn=False (its scan, transposed layout, own gradient) |" in text
    assert "test accuracy:" in (results / "gpu_train.log").read_text()
    assert "exported:" in (results / "gpu_export.log").read_text()
