"""Training on a multi-core CPU host: XLA flags, and glibc's malloc, set before JAX starts.

On a CPU an LSTM's time loop is many small operations, and XLA's per-operation overhead
dominates. ``use_host_cores`` sets three XLA flags that help (``benchmarks/NOTES.md``):
split the host into one XLA device per core, so that the data-parallel mesh runs a part of
each batch on every core; run each device's matmuls on its own core instead of Eigen's
thread pool (which, on small matrices, costs more in synchronisation than it gains); and
emit plain elementwise operations with XLA:CPU's loop emitter instead of its tiled one,
which runs a row that its 16-element tiles do not divide (the LSTM backward's ``[D+U+1,
4U]`` weight-gradient add) as a loop over tiles copied through the stack. With one device
it sets nothing: XLA's defaults, the switch to compare against (``--cpu-devices 1``).

``tune_malloc`` is glibc's, not XLA's: few malloc arenas, and large blocks kept for reuse
instead of mapped anew at every step.

Both act on what starts later: call them before anything runs a JAX computation
(``train.py`` does it first thing). On an accelerator they change nothing that runs there.
"""

from __future__ import annotations

import ctypes
import os
import sys

# The most devices the default splits a host into: the setting measured
# (``benchmarks/NOTES.md``). More cores would split each batch further, with an all-reduce
# every step among more devices that wait for each other; that was never measured.
MAX_DEFAULT_DEVICES = 2


# From this many units, one device on every core trains an LSTM faster than a device per
# core: the LSTM's CPU kernel (``lstm_jax.lstm_cpu``) then splits the units among the cores,
# so each core reads its part of the recurrent weights (4U^2 floats, 2 MiB at 362 units, the
# size of a core's L2 cache on the machines measured) instead of all of them at every step
# (``benchmarks/NOTES.md``).
ONE_DEVICE_FROM_UNITS = 384


def host_device_count(
    batch_size: int, cores: int | None = None, *, lstm_units: tuple[int, ...] = ()
) -> int:
    """The default number of CPU devices: one per core, at most ``MAX_DEFAULT_DEVICES``,
    and as many as split ``batch_size`` evenly; one where an LSTM (its layers'
    ``lstm_units``) has ``ONE_DEVICE_FROM_UNITS`` or more.

    >>> host_device_count(128, cores=2), host_device_count(128, cores=16)
    (2, 2)
    >>> host_device_count(7, cores=2)
    1
    >>> host_device_count(32, cores=2, lstm_units=(256,)), host_device_count(32, lstm_units=(512,))
    (2, 1)
    """
    if lstm_units and max(lstm_units) >= ONE_DEVICE_FROM_UNITS:
        return 1
    cores = min(cores or os.cpu_count() or 1, MAX_DEFAULT_DEVICES)
    return max(n for n in range(1, cores + 1) if batch_size % n == 0)


def xla_flags(devices: int, *, lstm_kernel: bool = False) -> str:
    """The XLA flags for ``devices`` CPU devices of one core each; none for one device, but
    for one device that runs the LSTM's CPU kernel (``lstm_kernel``): XLA's own operations
    on one thread, since the kernel's OpenMP threads use every core, and XLA's thread pool
    waiting beside them slowed the step (``benchmarks/NOTES.md``).

    >>> xla_flags(1), xla_flags(1, lstm_kernel=True)
    ('', '--xla_cpu_multi_thread_eigen=false')
    """
    if devices <= 1:
        return "--xla_cpu_multi_thread_eigen=false" if lstm_kernel else ""
    return (
        f"--xla_force_host_platform_device_count={devices} "
        "--xla_cpu_multi_thread_eigen=false "
        # an option XLA ignores where it lacks it
        "--xla_backend_extra_options=xla_cpu_disable_tiled_emitter"
    )


def use_host_cores(devices: int, *, lstm_kernel: bool = False) -> bool:
    """Adds ``xla_flags(devices, lstm_kernel=...)`` to ``XLA_FLAGS``; returns whether it did
    (not once JAX's backends have started, nor where ``XLA_FLAGS`` already chooses the
    device count)."""
    from lstm_jax import _jax_compat

    flags = os.environ.get("XLA_FLAGS", "")
    if _jax_compat.backends_started() or "xla_force_host_platform_device_count" in flags:
        return False
    chosen = xla_flags(devices, lstm_kernel=lstm_kernel).split()
    extra = " ".join(f for f in chosen if f.split("=")[0] not in flags)
    if not extra:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()
    return True


def tune_malloc(devices: int) -> None:
    """glibc's malloc set for training on ``devices`` CPU devices, for what is allocated
    after it; a setting that its environment variable chooses is left, and where
    ``GLIBC_TUNABLES`` is set, or without glibc, nothing is:

    - large blocks from the heap, not from ``mmap`` (``M_MMAP_MAX`` 0), and freed memory
      kept up to 2 GiB (``M_TRIM_THRESHOLD``): XLA allocates each step's temporary buffers
      anew (tens of MB for a language model's LSTM), and from ``mmap`` every page of them
      faults in and is zeroed again at every step;
    - one malloc arena for one device, two for more (``M_ARENA_MAX``): by default glibc
      gives up to eight a core, and XLA's compiling and executing threads each draw from
      their own, so memory one thread frees is not reused by the next and peak memory grows
      with every compilation. A thread outside the main arena still maps a block over its
      heap's 64 MB, ``M_MMAP_MAX`` or not, so one device takes the one arena; two devices
      keep two, which their threads, allocating at the same time, wait on less.

    The process keeps the memory it has freed, for its next step, instead of returning it.
    """
    if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return
    settings = (  # mallopt's parameter (<malloc.h>), its value, the variable that chooses it
        (-8, 1 if devices == 1 else 2, "MALLOC_ARENA_MAX"),  # M_ARENA_MAX
        (-4, 0, "MALLOC_MMAP_MAX_"),  # M_MMAP_MAX
        (-1, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_"),  # M_TRIM_THRESHOLD: the most mallopt takes
    )
    for param, value, variable in settings:
        if variable not in os.environ:
            mallopt(param, value)


__all__ = [
    "MAX_DEFAULT_DEVICES",
    "ONE_DEVICE_FROM_UNITS",
    "host_device_count",
    "tune_malloc",
    "use_host_cores",
]
