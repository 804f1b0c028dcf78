"""Standard error, redirected in this module alone: what native code and orbax's threads
print is held back where it would only be noise, and shown where it explains a failure.

* ``native_log_held()``: file descriptor 2, for native code (TensorFlow's start-up log),
  held where a supervisor can read it back (``hold_native_log_in``);
* ``errors_held()``: ``sys.stderr`` and absl's log records, for orbax's writer threads,
  held back (``ErrorsHeld``) only in a process that asked for it (``hold_writer_errors``:
  ``train.py``); a library caller's process is left as it is;
* ``original()``: a copy of file descriptor 2 as it is now, for a last line written while
  it may be held (``shutdown``);
* ``into(fd)``: file descriptor 2 into ``fd`` from now on (a supervised child's, into its
  parent's pipe: ``distributed.supervise``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile

# Where ``native_log_held`` holds the log: a file of its own each time, or, in a supervised
# child, one its parent reads back should the child die meanwhile (``hold_native_log_in``).
_native_hold = {"file": None}


def hold_native_log_in(file) -> None:
    """``native_log_held`` holds what it holds in the open ``file`` from now on: the parent
    that shares it reads there what a child that aborted meanwhile had printed."""
    _native_hold["file"] = file


@contextlib.contextmanager
def native_log_held():
    """Holds back what native code writes to standard error (file descriptor 2) meanwhile,
    such as TensorFlow's start-up log (CUDA probing, CPU features), which
    ``TF_CPP_MIN_LOG_LEVEL`` does not silence; shows it only if an exception leaves."""
    with contextlib.ExitStack() as stack:
        file = _native_hold["file"] or stack.enter_context(tempfile.TemporaryFile())
        fd = file.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(fd, 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held = os.pread(fd, os.lseek(fd, 0, os.SEEK_END) - start, start)
            os.ftruncate(fd, start)
            if failed:
                sys.stderr.write(held.decode(errors="replace"))


_writers = {"held": False}


def hold_writer_errors() -> None:
    """From now on, ``errors_held()`` holds back what orbax's writer threads print; for a
    command line that ends a failed write with one line (``train.py``)."""
    _writers["held"] = True


def errors_held() -> ErrorsHeld | NotHeld:
    """``ErrorsHeld()`` where ``hold_writer_errors`` was called, else a ``NotHeld``."""
    return ErrorsHeld() if _writers["held"] else NotHeld()


class NotHeld:
    """Holds nothing: ``sys.stderr`` and absl's logging stay as they are."""

    def release(self, *, show: bool) -> None:
        pass


class ErrorsHeld:
    """Holds back what orbax's writer threads print meanwhile: absl log records, and the
    tracebacks that errors in tensorstore's callbacks print to ``sys.stderr``. When a write
    fails, each writer thread reports it with a traceback, around the one exception ``save``
    raises and reports, and until orbax's threads end. ``release(show=True)`` prints what
    was held (after a save that succeeded, or one that a signal or exit interrupted)."""

    def __init__(self):
        self.held: list = []
        self._logger = logging.getLogger("absl")
        self._propagate = self._logger.propagate
        self._handler = _Keep(self.held)
        self._logger.addHandler(self._handler)
        self._logger.propagate = False  # absl's records reach stderr through the root
        self._stderr, sys.stderr = sys.stderr, io.StringIO()

    def release(self, *, show: bool) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate = self._propagate
        text, sys.stderr = sys.stderr.getvalue(), self._stderr
        if show:
            for record in self.held:
                self._logger.handle(record)
            sys.stderr.write(text)


class _Keep(logging.Handler):
    def __init__(self, held: list):
        super().__init__()
        self.held = held

    def emit(self, record):
        self.held.append(record)


def original() -> int:
    """A new file descriptor for standard error as it is now; the caller closes it."""
    return os.dup(2)


def into(fd: int) -> None:
    """Standard error (file descriptor 2) goes into ``fd`` from now on."""
    sys.stderr.flush()
    os.dup2(fd, 2)
