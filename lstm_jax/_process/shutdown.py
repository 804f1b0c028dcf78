"""Ending a run on SIGINT or SIGTERM at any moment without losing or half-writing a file.

``train.py`` runs under ``exit_on_signal(message)``: a signal ends the process at once, with
``message()`` on standard error and exit status 128 + the signal's number (130 for SIGINT,
143 for SIGTERM), unless a ``critical()`` section is running (a checkpoint or a run file
being written); that section then completes first, given up to ``GRACE_S`` seconds.
Ending at once, rather than raising ``KeyboardInterrupt`` into the main thread, is what makes
"any moment" work: the main thread may be inside XLA (compiling, or running a whole epoch)
for minutes, and Python runs signal handlers only between bytecodes of the main thread. A
watcher thread hears the signal through ``signal.set_wakeup_fd`` instead.

Outside ``exit_on_signal`` (a notebook, a library caller), ``critical()`` does nothing and
signals behave as Python's defaults.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from lstm_jax._process import console

SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Seconds a ``critical()`` section has to finish once a signal has come.
GRACE_S = 30.0

_lock = threading.Lock()
_state = {"depth": 0, "pending": None, "message": None, "stderr": 2}


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section a signal waits for (under ``exit_on_signal``)."""
    with _lock:
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            pending = _state["pending"] if _state["depth"] == 0 else None
        if pending is not None:
            _exit(pending)


def _exit(signum: int, unfinished: str = "") -> None:
    name = signal.Signals(signum).name
    try:
        message = _state["message"]() + unfinished
    except Exception as e:  # the message must not stop the exit
        message = f"({type(e).__name__} while describing the run: {e})"
    sys.stdout.flush()
    # To the standard error the run started with: it may be redirected meanwhile (TFDS's
    # native log is held back while TensorFlow starts; orbax's during a failed write).
    os.write(_state["stderr"], f"\ninterrupted by {name}. {message}\n".encode())
    os._exit(128 + signum)


def _on_signal(signum: int) -> None:
    with _lock:
        if _state["depth"]:
            if _state["pending"] is None:
                timer = threading.Timer(GRACE_S, _out_of_grace, (signum,))
                timer.daemon = True
                timer.start()
            _state["pending"] = _state["pending"] or signum
            return
    _exit(signum)


def _out_of_grace(signum: int) -> None:
    """A ``critical()`` section still running ``GRACE_S`` after the signal (a write that
    hangs: a peer process gone from a collective save, a stalled filesystem) ends anyway."""
    with _lock:
        if _state["pending"] is None:
            return
    _exit(signum, f" (what was being written did not finish within {GRACE_S:g} s: not kept)")


@contextlib.contextmanager
def exit_on_signal(message: Callable[[], str]) -> Iterator[None]:
    """SIGINT and SIGTERM end the process meanwhile, after any ``critical()`` section,
    printing ``interrupted by SIGINT. <message()>``. Must be entered in the main thread."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {s: signal.signal(s, lambda *_: None) for s in SIGNALS}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch():
        while True:
            try:
                data = os.read(read_fd, 1)
            except OSError:
                return
            if not data:
                return
            if data[0] in {int(s) for s in SIGNALS}:
                _on_signal(data[0])

    _state.update(pending=None, message=message, stderr=console.original())
    watcher = threading.Thread(target=watch, name="lstm_jax-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(_state["stderr"])
        _state.update(message=None, stderr=2)
        os.close(write_fd)
        watcher.join(timeout=1)
        os.close(read_fd)
