"""The code passes ruff as pyproject.toml configures it (B905 included), tests/scripts too."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_check_and_format():
    for command in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        out = subprocess.run(
            [sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr
