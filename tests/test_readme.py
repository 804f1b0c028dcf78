"""The README's commands are the ones CI runs, and its snippets run as written."""

import pathlib
import re
import shlex
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci_lines if "pytest" in line and not line.startswith("#"))
    assert f"\n{command}\n" in README


def test_readme_is_a_short_front_door():
    assert len(README.splitlines()) < 250
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert headings[:4] == ["Set up", "What you will see", "Notebooks", "Use a trained model"]


@pytest.mark.slow
def test_readme_python_snippets_run_in_order(tmp_path, monkeypatch):
    """Each ```python block, in one namespace, as a reader would paste them: with JAX's
    default rank promotion, which Keras's initialisers need (the suite otherwise raises)."""
    monkeypatch.chdir(tmp_path)  # the snippets write runs/ here
    namespace: dict = {}
    with jax.numpy_rank_promotion("allow"):
        for block in re.findall(r"```python\n(.*?)```", README, re.S):
            exec(compile(block, "README.md", "exec"), namespace)


@pytest.mark.slow
def test_readme_shell_snippets_run():
    commands = re.findall(r"^(python -c .+)$", README, re.M)
    assert commands
    for command in commands:
        args = shlex.split(command)
        out = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0 and "Total params: 16,310" in out.stdout, out.stderr
