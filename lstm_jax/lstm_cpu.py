"""The LSTM and the GRU over a whole sequence in one CPU kernel (``csrc/lstm_cpu.cc``),
forwards and backwards, as PyTorch runs them on a CPU: oneDNN's matrix products, one call a
pass: ``run`` for the LSTM, ``run_gru`` for the GRU.

The scan (``lstm_jax.lstm_scan``) pays XLA:CPU's fixed cost for each of a step's dozen small
kernels, and its products at a small batch run below what oneDNN reaches on the same cores
(``benchmarks/NOTES.md``). This kernel is one XLA FFI call for the forward pass and one for
the backward pass: inside it, each step is one oneDNN matrix product of ``[x_t, h_{t-1}]``
with ``[W; U]`` (the weights reordered once into the layout its kernels read fastest) and the
gate arithmetic, vectorised; the backward pass's weight gradients are one product each over
all steps. The GRU's is the same with its own gates: ``x_t W`` for all steps is one product
before the time loop, and each step's product is ``h_{t-1} U``, which the reset gate
multiplies (Keras's ``reset_after``). Results equal the scans' and the cells'
(``tests/test_lstm_cpu.py``: outputs and gradients against a float64 NumPy reference, the
LSTM's custom-gradient scan and autodiff through ``gru_cell``).

In bfloat16 (``precision="bfloat16"``) the products read bfloat16 and sum in float32, on the
CPU's AMX units where it has them (Intel Xeon from Sapphire Rapids), as PyTorch's autocast
runs its LSTM; the gates and the cell state stay float32 inside, and what leaves the kernel
is rounded to bfloat16: within bfloat16's rounding (about 4e-3) of the float32 kernel.

The kernel is compiled the first time it is needed (a few seconds, with the C++ compiler a
Linux machine or Colab has, ``g++`` or ``$CXX``), against jaxlib's FFI headers and the
``onednn-cpu-gomp`` wheels lstm_jax depends on, and kept under ``~/.cache/lstm_jax``
(``$LSTM_JAX_CACHE``). Where it cannot be built (no compiler, another OS), the scan runs,
with one warning that says why. ``LSTM_JAX_CPU_KERNEL=0`` turns it off (the scan runs).

``lstm_unmasked_scan`` and ``gru_unmasked_scan`` use it when ``why_not`` finds nothing
against it: on a CPU, in float32 or bfloat16, concrete shapes, and not inside
``lstm_cudnn.portable()`` (``jax.export``'s programs for any platform carry the scan, which
needs no library where they are served). Shapes as in ``lstm_jax.lstm_scan``: time-major
``xs [T, B, D]``, ``h0`` and ``c0`` ``[B, U]``; parameters as ``cells.init_lstm`` and
``cells.init_gru`` make them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import functools
import hashlib
import os
import pathlib
import shlex
import subprocess
import sys
import sysconfig
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import _jax_compat, lstm_cudnn
from lstm_jax._vjp import instantiate, primal_values

__all__ = ["available", "run", "run_gru", "why_not"]

Array = jax.Array
Params = dict[str, Array]

SOURCE = pathlib.Path(__file__).with_name("csrc") / "lstm_cpu.cc"
# The kernel's cells and dtypes, by the names of their handlers in SOURCE
# (``LstmCpuForwardF32``, ...); the FFI targets are ``lstm_jax_lstm_cpu_forward_f32``, ....
_CELLS = {"lstm": "Lstm", "gru": "Gru"}
_DTYPES = {jnp.dtype(jnp.float32): "F32", jnp.dtype(jnp.bfloat16): "BF16"}


def _target(cell: str, direction: str, dtype) -> str:
    return f"lstm_jax_{cell}_cpu_{direction}_{_DTYPES[jnp.dtype(dtype)].lower()}"


def _onednn_root() -> pathlib.Path | None:
    """Where the oneDNN wheels put ``include/oneapi/dnnl`` and ``lib/libdnnl.so``."""
    candidates = [os.environ.get("DNNLROOT"), sysconfig.get_paths()["data"]]
    try:
        candidates.append(sysconfig.get_paths(f"{os.name}_user")["data"])
    except KeyError:
        pass
    for root in filter(None, candidates):
        root = pathlib.Path(root)
        if (root / "include/oneapi/dnnl/dnnl.hpp").is_file() and (root / "lib/libdnnl.so").exists():
            return root
    return None


def _cache_dir() -> pathlib.Path:
    if os.environ.get("LSTM_JAX_CACHE"):
        return pathlib.Path(os.environ["LSTM_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "lstm_jax"


def _compile(root: pathlib.Path) -> pathlib.Path:
    """The kernel's shared library, compiled once per source, jaxlib, oneDNN and compiler."""
    import jaxlib

    cxx = shlex.split(os.environ.get("CXX", "g++"))
    version = subprocess.run([*cxx, "--version"], capture_output=True, text=True, check=True)
    lib = root / "lib"
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        jaxlib.__version__.encode(),
        str((lib / "libdnnl.so").resolve()).encode(),
        version.stdout.encode(),
    ):
        key.update(part)
    out_dir = _cache_dir() / f"lstm_cpu-{key.hexdigest()[:16]}"
    target = out_dir / "liblstm_cpu.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "lock", "w") as lock:  # one process compiles; the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        partial = out_dir / f"liblstm_cpu.so.{os.getpid()}"
        command = [
            *cxx,
            "-O3",
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-fopenmp",
            "-fno-math-errno",
            "-fno-trapping-math",  # lets the gate arithmetic vectorise
            "-w",
            f"-I{jax.ffi.include_dir()}",
            f"-I{root / 'include'}",
            str(SOURCE),
            f"-L{lib}",
            "-ldnnl",
            f"-Wl,-rpath,{lib}",
            "-o",
            str(partial),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"{shlex.join(command)} failed: {done.stderr[-2000:]}")
        partial.replace(target)
    return target


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded kernel with its FFI targets registered, or why it is not there."""
    if not sys.platform.startswith("linux"):
        return f"it is built for Linux only (this is {sys.platform})"
    root = _onednn_root()
    if root is None:
        return "oneDNN is not installed (pip install onednn-cpu-gomp onednn-devel-cpu-gomp)"
    try:
        library = ctypes.CDLL(str(_compile(root)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        return f"it could not be built: {error}"
    for cell, prefix in _CELLS.items():
        for dtype, suffix in _DTYPES.items():
            for direction in ("forward", "backward"):
                handler = getattr(library, f"{prefix}Cpu{direction.title()}{suffix}")
                target = _target(cell, direction, dtype)
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), "cpu")
    return library


def available() -> bool:
    """Whether the kernel is built and loaded here (building it if need be)."""
    if isinstance(_library(), str):
        _warn_once(_library())
        return False
    return True


@functools.cache
def _warn_once(why: str) -> None:
    warnings.warn(
        f"lstm_jax: the CPU kernel is not used, so LSTMs and GRUs scan (slower): {why}",
        RuntimeWarning,
        stacklevel=3,
    )


def why_not(params: Params, xs: Array, carry: tuple) -> str | None:
    """Why the kernel cannot run this LSTM or GRU (``xs [T, B, D]`` from ``carry``), or
    ``None``."""
    if os.environ.get("LSTM_JAX_CPU_KERNEL", "1") == "0":
        return "LSTM_JAX_CPU_KERNEL=0"
    if lstm_cudnn.is_portable():
        return "a program for any platform is being traced (lstm_cudnn.portable: jax.export)"
    if jax.default_backend() != "cpu":
        return f"JAX's default backend is {jax.default_backend()}, not the CPU"
    if not all(isinstance(size, int) for size in (*xs.shape, *carry[0].shape)):
        return "its shapes are symbolic (jax.export)"
    if xs.shape[0] == 0 or xs.shape[1] == 0:
        return "it has no steps or no examples"
    arrays = (xs, *carry, *params.values())
    dtypes = {jnp.result_type(a) for a in arrays}
    if len(dtypes) != 1 or dtypes.pop() not in _DTYPES:
        return "the kernel takes float32 or bfloat16, one for every array"
    if not available():
        return f"the kernel is not there: {_library()}"
    return None


def _threads() -> int:
    """Threads for one device's call: this process's cores shared among its CPU
    devices, which run their calls at the same time (the trainer's one device per core)."""
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // max(1, jax.local_device_count("cpu")))


def _loaded() -> None:
    """The kernel's FFI targets registered, or a ``RuntimeError`` saying why they cannot be."""
    if isinstance(_library(), str):
        raise RuntimeError(f"lstm_jax: the CPU kernel is not there: {_library()}")


def _ffi_call(cell: str, direction: str, dtype, results):
    _loaded()
    return jax.ffi.ffi_call(_target(cell, direction, dtype), results, vmap_method="sequential")


def _residual(keep: bool, *dims: int, dtype) -> jax.ShapeDtypeStruct:
    """A result of the kernel's, of size 0 where nothing will read it: the forward's
    residuals when no gradient will be taken (the kernel then keeps its steps in buffers of
    its own), a gradient of inputs that are not differentiated (it is then not computed)."""
    return jax.ShapeDtypeStruct(dims if keep else (0,), dtype)


def _forward(params: Params, xs: Array, h0: Array, c0: Array, *, keep: bool):
    t, n, d = xs.shape
    u = h0.shape[-1]
    results = (
        jax.ShapeDtypeStruct((t, n, u), xs.dtype),  # hs
        jax.ShapeDtypeStruct((n, u), xs.dtype),  # c_T
        _residual(keep, t, n, 4 * u, dtype=jnp.float32),  # the gates' activations
        _residual(keep, t, n, u, dtype=jnp.float32),  # the cell states
        _residual(keep, t, n, d + u, dtype=xs.dtype),  # [x_t, h_{t-1}]
    )
    call = _ffi_call("lstm", "forward", xs.dtype, results)
    kernel, recurrent, bias = params["kernel"], params["recurrent_kernel"], params["bias"]
    outputs = call(xs, h0, c0, kernel, recurrent, bias, threads=np.int64(_threads()))
    # Inside jax.shard_map the call's results vary over the mesh axes its inputs vary over.
    return _jax_compat.varying_like(outputs, xs)


@jax.custom_vjp
def run(params: Params, xs: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
    """``(hs [T, B, U], h_T, c_T)``: the LSTM over time-major ``xs`` from ``(h0, c0)``, in the
    kernel (check ``why_not`` first). Differentiable (``jax.grad``) in every argument."""
    hs, c, *_ = _forward(params, xs, h0, c0, keep=False)
    return hs, hs[-1], c


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Needs:
    """Which gradients besides the weights' the backward pass computes: of the inputs, of
    the initial state (``symbolic_zeros``: what the differentiated function depends on)."""

    inputs: bool
    state: bool

    @classmethod
    def of(cls, xs, *state) -> _Needs:
        return cls(xs.perturbed, any(s.perturbed for s in state))


def _run_fwd(params, xs, h0, c0):
    needs = _Needs.of(xs, h0, c0)
    params, xs, h0, c0 = primal_values((params, xs, h0, c0))
    hs, c, act, cs, xh = _forward(params, xs, h0, c0, keep=True)
    return (hs, hs[-1], c), (params, xs, c0, act, cs, xh, needs)


def _run_bwd(residuals, cotangents):
    params, xs, c0, act, cs, xh, needs = residuals
    d_hs, d_h, d_c = (instantiate(d, xs) for d in cotangents)
    like = [xs, c0, c0, params["kernel"], params["recurrent_kernel"], params["bias"]]
    kept = [needs.inputs, needs.state, needs.state, True, True, True]
    results = [_residual(k, *a.shape, dtype=xs.dtype) for a, k in zip(like, kept, strict=True)]
    results.append(jax.ShapeDtypeStruct(act.shape, jnp.float32))  # dz, the kernel's buffer
    call = _ffi_call("lstm", "backward", xs.dtype, results)
    dxs, dh0, dc0, d_kernel, d_recurrent, d_bias, _ = call(
        c0,
        params["kernel"],
        params["recurrent_kernel"],
        act,
        cs,
        xh,
        d_hs,
        d_h,
        d_c,
        threads=np.int64(_threads()),
    )
    grads = {"kernel": d_kernel, "recurrent_kernel": d_recurrent, "bias": d_bias}
    # Each gradient of the type of its primal, as custom_vjp requires (inside shard_map).
    grads = {k: _jax_compat.varying_like(grads[k], params[k]) for k in params}
    dxs = _jax_compat.varying_like(dxs, xs) if needs.inputs else None
    dh0, dc0 = _jax_compat.varying_like((dh0, dc0), xs) if needs.state else (None, None)
    return grads, dxs, dh0, dc0


run.defvjp(_run_fwd, _run_bwd, symbolic_zeros=True)


def _gru_forward(params: Params, xs: Array, h0: Array, *, keep: bool):
    t, n, _ = xs.shape
    u = h0.shape[-1]
    results = (
        jax.ShapeDtypeStruct((t, n, u), xs.dtype),  # hs
        _residual(keep, t, n, 4 * u, dtype=jnp.float32),  # z, r, n, e_n
        _residual(keep, t, n, u, dtype=xs.dtype),  # each step's h_{t-1}
    )
    call = _ffi_call("gru", "forward", xs.dtype, results)
    kernel, recurrent, bias = params["kernel"], params["recurrent_kernel"], params["bias"]
    outputs = call(xs, h0, kernel, recurrent, bias, threads=np.int64(_threads()))
    return _jax_compat.varying_like(outputs, xs)


@jax.custom_vjp
def run_gru(params: Params, xs: Array, h0: Array) -> tuple[Array, Array]:
    """``(hs [T, B, U], h_T)``: the GRU (``cells.gru_cell``) over time-major ``xs`` from
    ``h0``, in the kernel (check ``why_not`` first). Differentiable in every argument."""
    hs, *_ = _gru_forward(params, xs, h0, keep=False)
    return hs, hs[-1]


def _run_gru_fwd(params, xs, h0):
    needs = _Needs.of(xs, h0)
    params, xs, h0 = primal_values((params, xs, h0))
    hs, act, h_prev = _gru_forward(params, xs, h0, keep=True)
    return (hs, hs[-1]), (params, xs, h0, act, h_prev, needs)


def _run_gru_bwd(residuals, cotangents):
    params, xs, h0, act, h_prev, needs = residuals
    d_hs, d_h = (instantiate(d, xs) for d in cotangents)
    like = [xs, h0, params["kernel"], params["recurrent_kernel"], params["bias"]]
    kept = [needs.inputs, needs.state, True, True, True]
    results = [_residual(k, *a.shape, dtype=xs.dtype) for a, k in zip(like, kept, strict=True)]
    t, n, u = d_hs.shape
    results.append(jax.ShapeDtypeStruct((2, t, n, 3 * u), jnp.float32))  # the kernel's dA, dE
    call = _ffi_call("gru", "backward", xs.dtype, results)
    kernel, recurrent = params["kernel"], params["recurrent_kernel"]
    dxs, dh0, d_kernel, d_recurrent, d_bias, _ = call(
        xs, kernel, recurrent, act, h_prev, d_hs, d_h, threads=np.int64(_threads())
    )
    grads = {"kernel": d_kernel, "recurrent_kernel": d_recurrent, "bias": d_bias}
    grads = {k: _jax_compat.varying_like(grads[k], params[k]) for k in params}
    dxs = _jax_compat.varying_like(dxs, xs) if needs.inputs else None
    dh0 = _jax_compat.varying_like(dh0, xs) if needs.state else None
    return grads, dxs, dh0


run_gru.defvjp(_run_gru_fwd, _run_gru_bwd, symbolic_zeros=True)
