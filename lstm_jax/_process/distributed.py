"""Several processes, on one machine or many, as one run: JAX's distributed runtime.

Every process runs the same program (``train.py`` with the same flags, each with its own
``process_id``); ``initialize`` joins them through the coordinator, process 0, at
``coordinator_address``. From then on ``jax.devices()`` lists every process's devices, the
training mesh spans them all, and each step's gradients are summed across processes: on
CPUs through Gloo over TCP, on GPUs and TPUs through their own collectives.

When one process dies the others cannot go on: a collective that waits for it fails, or
JAX's coordination service notices the missing heartbeats (``HEARTBEAT_TIMEOUT_S``) and
ends every process. ``supervise`` (used by ``train.py``) turns that end, which JAX reports
as a native log and an abort, into one line that names the lost process.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lstm_jax._process import console, rollcall
from lstm_jax.errors import DistributedError, ProcessLost

# Seconds without a heartbeat after which JAX's coordination service declares a process
# dead and stops the others (JAX's default is 100).
HEARTBEAT_TIMEOUT_S = 30
# Seconds the processes wait for each other to join (JAX's default).
JOIN_TIMEOUT_S = 300


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: int = JOIN_TIMEOUT_S,
    restore_signals: bool = False,
) -> None:
    """Joins this process to the run's others (``jax.distributed.initialize``).

    With no arguments, JAX detects the cluster (SLURM, Open MPI, TPU pods, Kubernetes).
    Gloo is chosen for collectives between CPU devices of different processes (other
    platforms have their own). Given the three, the processes first answer ``rollcall``
    (one process per id, a coordinator port that is free). Call before anything starts
    JAX's backends; a second call does nothing. ``restore_signals``: SIGINT and SIGTERM go
    back to this process's Python handlers afterwards (``train.py``'s; JAX's runtime takes
    them); a library caller's are left as JAX leaves them.

    Raises:
      DistributedError: arguments that cannot describe a run (some given and not others, a
        ``process_id`` outside ``0 .. num_processes - 1``, an address without a port), a
        roll call that fails (a taken id, a port in use, a process that did not report), or
        JAX's own refusal, in one line.
    """
    check_arguments(coordinator_address, num_processes, process_id)
    if jax.distributed.is_initialized():
        return
    if coordinator_address is not None and num_processes > 1:
        rollcall.take(coordinator_address, num_processes, process_id, timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            initialization_timeout=timeout,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        )
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"cannot start JAX's distributed runtime: {_first_line(e)}") from e
    if restore_signals:
        _take_back_signals()


def _take_back_signals() -> None:
    """SIGINT and SIGTERM to this process's Python handlers again: JAX's runtime installs
    its preemption notifier on them, which only notes a SIGTERM, so that a run (or any
    program) would go on after it. Main thread only; elsewhere JAX's stay."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(s)
        if handler is not None:  # None: installed outside Python; leave it
            signal.signal(s, handler)


def check_arguments(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Raises ``DistributedError`` unless the three describe one process of a run, or are
    all ``None`` (JAX then detects the cluster)."""
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise DistributedError(
            "coordinator_address, num_processes and process_id go together: give all three "
            "(or none, on a cluster JAX detects)"
        )
    if not any(given):
        return
    if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", coordinator_address):
        raise DistributedError(
            f"coordinator_address must be HOST:PORT (e.g. 10.0.0.1:1234, the machine of "
            f"process 0); got {coordinator_address!r}"
        )
    if num_processes < 1:
        raise DistributedError(f"num_processes must be 1 or more; got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise DistributedError(
            f"process_id must be from 0 to {num_processes - 1} (num_processes "
            f"{num_processes}); got {process_id}"
        )


def is_multiprocess() -> bool:
    return jax.process_count() > 1


# Bytes of JSON each process can state in ``agree``.
_STATEMENT_BYTES = 1 << 16


def agree(statement: dict[str, Any]) -> None:
    """Compares what each process of the run states (``name -> value``, JSON data) with the
    others': returns when all agree; else raises, on every process alike, naming each item
    that differs and each process's value.

    Raises:
      DistributedError: the processes were not started alike.
    """
    text = json.dumps(statement).encode()
    if len(text) > _STATEMENT_BYTES - 8:
        raise DistributedError(
            f"the run's statement is {len(text):,} bytes of JSON; at most "
            f"{_STATEMENT_BYTES - 8:,} can be compared"
        )
    buffer = np.zeros(_STATEMENT_BYTES, np.uint8)
    buffer[:8] = np.frombuffer(len(text).to_bytes(8, "little"), np.uint8)
    buffer[8 : 8 + len(text)] = np.frombuffer(text, np.uint8)
    rows = _gathered(buffer)
    stated = [
        json.loads(row[8 : 8 + int.from_bytes(row[:8].tobytes(), "little")].tobytes())
        for row in rows
    ]
    names = list(dict.fromkeys(name for s in stated for name in s))  # in the order stated
    differ = [n for n in names if len({json.dumps(s.get(n), sort_keys=True) for s in stated}) > 1]
    if differ:
        said = "; ".join(
            f"{n}: " + ", ".join(f"{_shown(s.get(n))} on process {i}" for i, s in enumerate(stated))
            for n in differ
        )
        raise DistributedError(
            f"the {len(stated)} processes of the run were not started alike: {said}. Start "
            "every process with the same settings, data, lstm_jax and JAX; every process stops."
        )


def _gathered(row: np.ndarray) -> np.ndarray:
    """``row`` of every process, ``[processes, *row.shape]``; a process that stopped
    meanwhile is ``ProcessLost``."""
    from jax.experimental import multihost_utils

    try:
        return np.asarray(multihost_utils.process_allgather(row))
    except jax.errors.JaxRuntimeError as e:
        raise lost(e, "No checkpoint was saved.") from e


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def check_one_workdir(path: pathlib.Path) -> None:
    """Proves that ``path`` is one directory for every process: process 0 writes a token
    there that each of the others must read back. One process alone: returns.

    Raises:
      DistributedError: some process does not see the token (each has a directory of its
        own, as on machines without a shared filesystem); on every process alike.
    """
    if not is_multiprocess():
        return
    from jax.experimental import multihost_utils

    token_file = path / ".processes"
    if jax.process_index() == 0:
        token_file.write_text(os.urandom(16).hex())
    try:
        multihost_utils.sync_global_devices("lstm_jax: token written")
        try:
            seen = bytes.fromhex(token_file.read_text())
        except (OSError, ValueError):
            seen = bytes(16)
        rows = _gathered(np.frombuffer(seen, np.uint8))
        multihost_utils.sync_global_devices("lstm_jax: token read")
    except jax.errors.JaxRuntimeError as e:
        raise lost(e, "No checkpoint was saved.") from e
    finally:
        if jax.process_index() == 0:
            token_file.unlink(missing_ok=True)
    blind = [i for i, row in enumerate(rows) if (row != rows[0]).any()]
    if blind:
        who = ", ".join(map(str, blind))
        raise DistributedError(
            f"--workdir {path} is not one directory for all {len(rows)} processes: process "
            f"{who} cannot read what process 0 wrote there (each machine has its own?). Give "
            "every process a --workdir on a filesystem all of them share; every process stops."
        )


def lost(error: Exception, kept: str) -> ProcessLost:
    """The ``ProcessLost`` for a collective's ``error`` in a multi-process run."""
    return ProcessLost(
        f"another process of the run stopped (JAX: {_first_line(error)}); this one stops too. "
        f"{kept}"
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


# --------------------------------------------------------------------------------------
# train.py's supervisor
# --------------------------------------------------------------------------------------

# Lines that begin JAX's report of a failed distributed runtime: from here on, what the
# process prints is held back and summed up in one line.
_FAILING = re.compile(
    r"coordination_service|Terminating process because the JAX distributed service"
    r"|heartbeat|PollForError|RegisterTask|distributed service|preemption_sync"
)


def supervise(
    address: str | None,
    num_processes: int | None,
    process_id: int | None,
    kept: Callable[[], str],
) -> None:
    """Runs the rest of this program in a child process and reports how it ends.

    Returns in the child, whose standard error now goes through this process. The parent
    passes that on, forwards SIGINT and SIGTERM, and exits as the child did, except when JAX's
    distributed runtime ended it: then it prints one line instead of JAX's native log,
    naming the lost process (or the missing coordinator, or a taken process id) and what
    ``kept()`` says is left, and exits with 1. Must be called before JAX starts its
    backends and any thread.
    """
    read_fd, write_fd = os.pipe()
    native = tempfile.TemporaryFile()  # the child's held native log, should it abort
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        _die_with_parent()
        os.close(read_fd)
        console.into(write_fd)
        os.close(write_fd)
        console.hold_native_log_in(native)
        return
    os.close(write_fd)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, _: _forward(child, signum))
    held: list[str] = []
    for line in _lines(read_fd):
        if held or _FAILING.search(line):
            held.append(line)
        else:
            os.write(2, line.encode(errors="replace"))
    _, status = os.waitpid(child, 0)
    unshown = os.pread(native.fileno(), os.fstat(native.fileno()).st_size, 0)
    if unshown:  # the child died while its native log was held
        held.append(unshown.decode(errors="replace"))
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code  # as a shell reports a signal
    if held and code != 0:
        message, ran = _diagnose("".join(held), address, num_processes, process_id)
        os.write(2, f"error: {message}{' ' + kept() if ran else ''}\n".encode())
        code = 1
    else:
        os.write(2, "".join(held).encode(errors="replace"))
    os._exit(code)


def _die_with_parent() -> None:
    """Linux: this process is killed when its parent ends, however it ends (``kill -9`` of
    the process a user sees as ``train.py`` ends the run's work in it too)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child outlives a killed parent
        pass


def _forward(child: int, signum: int) -> None:
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


def _lines(fd: int):
    """The lines read from ``fd`` until it closes (the last one may lack its newline)."""
    pending = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace") + "\n"
    if pending:
        yield pending.decode(errors="replace")


def _diagnose(text: str, address, num_processes, process_id) -> tuple[str, bool]:
    """One sentence for JAX's report of a failed distributed runtime, and whether the run
    had started (it had unless the processes could not join)."""
    me = f"process {process_id}" if process_id is not None else "this process"
    of = f" of {num_processes}" if num_processes else ""
    dead = re.search(r"Task (\d+) heartbeat timeout", text) or re.search(
        r"stopped sending heartbeats\):\s*\n?\s*([\d, ]+)", text
    )
    if dead:
        ids = ", ".join(re.findall(r"\d+", dead.group(1)))
        lost = f"process {ids}{of} stopped (its heartbeats to the coordinator stopped)"
        return f"{lost}; {me} stops too.", True
    if "different incarnation" in text or "already in error" in text:
        # A second process with a taken id that the roll call did not see: it came once the
        # run had begun. The coordinator's log names the id; the others' do not.
        taken = re.search(r"(\d+) unexpectedly tried to connect", text)
        which = f" --process-id {taken.group(1)}" if taken else " one --process-id"
        return (
            f"two processes started as{which}: each of the {num_processes or 'N'} processes "
            f"needs its own, from 0 to N-1; {me} stops.",
            True,
        )
    if "RegisterTask" in text and "DEADLINE_EXCEEDED" in text:
        return (
            f"{me}{of} found no coordinator at {address or 'the address JAX detected'} "
            f"within the join timeout: start process 0 there (it is the coordinator), check "
            "the host and port, and give every process the same --coordinator-address and "
            "--num-processes.",
            False,
        )
    if "PollForError" in text or "coordination service" in text.lower():
        where = f", {address}" if address else ""
        return (
            f"process 0 (the coordinator{where}) stopped or cannot be reached; {me} stops too.",
            True,
        )
    status = re.search(r"absl::Status: ([^\n]+)", text)
    reason = status.group(1) if status else text.strip().splitlines()[-1]
    return f"JAX's distributed runtime stopped {me}: {reason[:300]}.", True


def wait_for_verdict() -> None:
    """After a lost process, in a supervised run: waits for JAX's coordination service to
    name it (it ends this process once ``HEARTBEAT_TIMEOUT_S`` has passed without the lost
    one's heartbeat); returns if it does not."""
    time.sleep(HEARTBEAT_TIMEOUT_S + 15)
