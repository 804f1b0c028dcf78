"""Strict numerics for every test, and Keras on its JAX backend."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One XLA compilation cache for the session (JAX's persistent cache), shared by the pytest
# workers and the processes tests start: many tests compile the same programs (the fake-data
# runs' epochs), which are then compiled once. New for each session, so nothing is reused
# from an earlier one; made by the first process (pytest, or its controller), inherited by
# the others, and removed by it at the end.
_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lstm_jax_xla_")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


SCRIPTS = ROOT / "tests" / "scripts"


def _run_script(name: str, *args: str, xla_flags: str = "") -> str:
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *map(str, args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def run_script():
    """``run_script(name, *args, xla_flags="")`` runs ``tests/scripts/<name>`` in a fresh
    Python whose XLA starts with ``xla_flags`` (the device count and other flags are fixed
    when JAX starts) and returns what it printed."""
    return _run_script


@pytest.fixture
def on_two_cpu_devices():
    """``on_two_cpu_devices(name, *args)`` runs ``tests/scripts/<name>`` in a fresh Python
    with two XLA CPU devices and returns its printed words."""
    flags = "--xla_force_host_platform_device_count=2"
    return lambda name, *args: _run_script(name, *args, xla_flags=flags).split()


def pytest_configure(config):
    """The figures tests report go to a file that every pytest-xdist worker appends to and
    the controller summarises at the end."""
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers
        directory = tempfile.mkdtemp(prefix="lstm_jax_figures_")
        os.environ["LSTM_JAX_FIGURES"] = os.path.join(directory, "figures.jsonl")


def pytest_unconfigure(config):
    if _XLA_CACHE is not None:
        shutil.rmtree(_XLA_CACHE, ignore_errors=True)


def _add_figure(item: dict) -> None:
    with open(os.environ["LSTM_JAX_FIGURES"], "a") as f:
        f.write(json.dumps(item) + "\n")


@pytest.fixture
def record_largest():
    """``record_largest(what, value)`` keeps the largest value seen per ``what`` for the
    end-of-run summary (e.g. the largest difference against Keras)."""
    return lambda what, value: _add_figure({"largest": what, "value": float(value)})


@pytest.fixture
def report():
    """``report(line)`` adds a line to the end-of-run summary."""
    return lambda line: _add_figure({"line": line})


def pytest_terminal_summary(terminalreporter):
    path = pathlib.Path(os.environ.get("LSTM_JAX_FIGURES", "/nonexistent"))
    items = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not items:
        return
    largest: dict[str, float] = {}
    for item in items:
        if "largest" in item:
            largest[item["largest"]] = max(largest.get(item["largest"], 0.0), item["value"])
    terminalreporter.section("lstm_jax figures")
    for what, value in sorted(largest.items()):
        terminalreporter.write_line(f"largest {what}: {value:.3g}")
    for item in items:
        if "line" in item:
            terminalreporter.write_line(item["line"])
