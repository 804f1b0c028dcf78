"""Running well on a multi-core CPU host, where XLA's defaults leave speed behind.

On CPU, an LSTM's time loop is many small operations, and XLA's per-operation overhead
dominates. Three XLA settings help, measured in ``benchmarks/`` on a 2-core host: split the
host into one XLA device per core, so that the data-parallel mesh runs a part of each batch
on every core; run each device's matmuls on its own core instead of Eigen's thread pool
(which, on small matrices, costs more in synchronisation than it gains); and emit plain
elementwise operations with XLA:CPU's loop emitter instead of its tiled one, which runs a
row that its 16-element tiles do not divide as a loop over tiles copied through the stack
(adding the LSTM backward's ``[78, 200]`` weight-gradient share took 10 us instead of 2).

All are XLA flags, read once when JAX starts its CPU backend: call ``use_host_cores``
before anything runs a JAX computation (``train.py`` does it first thing). On a machine
with an accelerator they change nothing that runs there.

One setting is not XLA's: on Linux (glibc), ``use_host_cores`` also caps malloc at two
arenas. By default glibc gives up to eight per core, and XLA's compiling and executing
threads each draw from their own, so memory one thread frees is not reused by the next:
peak resident memory grew with every compilation (70-140 MiB more in
``benchmarks/NOTES.md``; speed the same within the machine's noise). A ``MALLOC_ARENA_MAX``
in the environment is left to decide.
"""

from __future__ import annotations

import ctypes
import os
import sys


def host_device_count(batch_size: int, cores: int | None = None) -> int:
    """The most CPU devices (at most one per core) that split ``batch_size`` evenly."""
    cores = cores or os.cpu_count() or 1
    return max(n for n in range(1, cores + 1) if batch_size % n == 0)


def use_host_cores(devices: int) -> bool:
    """Caps glibc's malloc arenas and sets the XLA flags for ``devices`` CPU devices, one
    core each; returns whether it set the flags (``False`` once JAX's backends have started,
    when nothing is set, or when XLA_FLAGS already chooses the device count).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return False
    _limit_malloc_arenas(2)
    if "xla_force_host_platform_device_count" in flags or devices < 1:
        return False
    extra = f"--xla_force_host_platform_device_count={devices}"
    if devices > 1 and "xla_cpu_multi_thread_eigen" not in flags:
        extra += " --xla_cpu_multi_thread_eigen=false"
    if "xla_backend_extra_options" not in flags:  # an option XLA ignores where it lacks it
        extra += " --xla_backend_extra_options=xla_cpu_disable_tiled_emitter"
    os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()
    return True


def _limit_malloc_arenas(arenas: int) -> None:
    """glibc's ``mallopt(M_ARENA_MAX, arenas)``, for threads that start after it; nothing
    where ``MALLOC_ARENA_MAX`` chooses, or without glibc."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return
    m_arena_max = -8  # from glibc's <malloc.h>
    mallopt(m_arena_max, arenas)


__all__ = ["host_device_count", "use_host_cores"]
