"""The installed package's version, as pyproject.toml gives it."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("lstm_jax")
except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
    __version__ = "unknown"
