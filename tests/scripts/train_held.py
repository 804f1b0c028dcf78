"""``train.py`` on fake data (512 examples), held at a named point until the test acts, so
that a test can signal or kill a run in a given state on any machine, fast or slow.

python train_held.py POINT [train.py flags]

POINT is one of:

* ``compiling``: while the epoch is being compiled (its first trace of the train step);
* ``epoch:N``: inside epoch N, at its first step (the main thread waits on XLA running the
  epoch; ``epoch:2`` means epoch 1's checkpoint is saved);
* ``before:N``: in Python, just before epoch N starts (epoch N-1's checkpoint is saved);
* ``saving:N``: inside the save of epoch N's checkpoint, until a SIGINT or SIGTERM has been
  heard, which then waits for the save;
* ``hung:N``: inside the save of epoch N's checkpoint, for good (as a save that waits on a
  process that is gone, or on a stalled filesystem); a signal's grace is 2 s here;
* ``none``: never held (the same program, for the other processes of a run).

At the point it prints ``held: POINT`` and waits for a line on standard input before it goes
on (start it with ``stdin=subprocess.PIPE``); once standard input has ended, it waits until a
signal ends it.
"""

import pathlib
import sys
import threading
import time

import tensorflow_datasets as tfds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # train.py
import train  # noqa: E402
from lstm_jax._process import shutdown  # noqa: E402
from lstm_jax.training import checkpoints, reporting, sharding, steps

point = sys.argv[1]
kind, _, number = point.partition(":")
if kind not in ("compiling", "epoch", "before", "saving", "hung", "none"):
    sys.exit(f"train_held.py: unknown point {point!r}")
at_epoch = int(number) if number else None


def hold() -> None:
    print(f"held: {point}", flush=True)
    if not sys.stdin.readline():
        threading.Event().wait()


class Progress(reporting.Progress):
    """Always fed from inside the epoch (the bar itself only if asked for); holds in
    ``epoch:N``."""

    def __init__(self, enabled: bool):
        super().__init__(enabled)
        self.show, self.enabled, self.epoch = enabled, True, 0

    def open(self, epoch, *args):
        self.epoch = epoch
        if self.show:
            super().open(epoch, *args)

    def update(self, step, *args):
        if kind == "epoch" and self.epoch == at_epoch and int(step) == 0:
            hold()
        super().update(step, *args)


train_step, epoch_order = steps._train_step, sharding.epoch_order
save = checkpoints.Checkpointer.save
traced = []


def held_train_step(*args, **kwargs):
    if kind == "compiling" and not traced:
        traced.append(True)
        hold()
    return train_step(*args, **kwargs)


def held_epoch_order(seed, epoch, n):
    if kind == "before" and epoch == at_epoch:
        hold()
    return epoch_order(seed, epoch, n)


def held_save(self, epoch, state, meta):
    if kind == "saving" and epoch == at_epoch:
        print(f"held: {point}", flush=True)
        while shutdown._state["pending"] is None:  # the signal the test sends, heard
            time.sleep(0.01)
    if kind == "hung" and epoch == at_epoch:
        shutdown.GRACE_S = 2.0
        hold()
        threading.Event().wait()
    save(self, epoch, state, meta)


reporting.Progress = Progress
steps._train_step = held_train_step
sharding.epoch_order = held_epoch_order
checkpoints.Checkpointer.save = held_save
with tfds.testing.mock_data(num_examples=512):
    sys.exit(train.main(sys.argv[2:]))
