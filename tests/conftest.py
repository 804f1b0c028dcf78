"""Strict numerics for every test, and Keras on its JAX backend."""

import os
import pathlib
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
_LARGEST: dict[str, float] = {}
_LINES: list[str] = []


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


@pytest.fixture
def record_largest():
    """``record_largest(what, value)`` keeps the largest value seen per ``what`` for the
    end-of-run summary (e.g. the largest difference against Keras)."""

    def record(what: str, value: float) -> None:
        _LARGEST[what] = max(_LARGEST.get(what, 0.0), float(value))

    return record


@pytest.fixture
def report():
    """``report(line)`` adds a line to the end-of-run summary."""
    return _LINES.append


def pytest_terminal_summary(terminalreporter):
    if not (_LARGEST or _LINES):
        return
    terminalreporter.section("lstm_jax figures")
    for what, value in sorted(_LARGEST.items()):
        terminalreporter.write_line(f"largest {what}: {value:.3g}")
    for line in _LINES:
        terminalreporter.write_line(line)
