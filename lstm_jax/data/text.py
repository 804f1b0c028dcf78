"""Text for language models: characters as token ids, cut into windows (``from_text``).

A text's characters are numbered by its ``vocabulary`` (the training part's characters,
sorted). Each split becomes windows of ``bptt`` steps in the text's order: window ``i`` reads
characters ``[i * bptt, (i + 1) * bptt)`` and its targets are the same characters one step
on. The trainer reads them as contiguous streams (``lstm_jax.training.sharding``) or in
random order.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from lstm_jax.data.splits import Dataset, Split
from lstm_jax.errors import DataError

UNKNOWN = "\ufffd"  # the id a held-out character the training part lacks is read as


def vocabulary_of(text: str) -> str:
    """The characters of ``text``, sorted: character ``vocabulary[i]`` has id ``i``."""
    return "".join(sorted(set(text)))


def encode(text: str, vocabulary: str, *, what: str = "text") -> np.ndarray:
    """``text``'s ids in ``vocabulary`` (int32); a character outside it is read as
    ``UNKNOWN`` if the vocabulary has it, else refused.

    >>> encode("abca", "abc").tolist()
    [0, 1, 2, 0]
    """
    index = {c: i for i, c in enumerate(vocabulary)}
    unknown = index.get(UNKNOWN)
    missing = sorted({c for c in text if c not in index})
    if missing and unknown is None:
        shown = "".join(missing[:20])
        raise DataError(
            f"{what} holds {len(missing)} character(s) the model's vocabulary lacks: {shown!r}; "
            f"it knows only {vocabulary!r}"
        )
    return np.fromiter((index.get(c, unknown) for c in text), np.int32, len(text))


def decode(ids, vocabulary: str) -> str:
    """The text of ``ids`` in ``vocabulary``."""
    return "".join(vocabulary[int(i)] for i in np.asarray(ids).reshape(-1))


def windows(ids: np.ndarray, bptt: int) -> Split:
    """``ids`` as windows of ``bptt`` steps in order: inputs ``[N, bptt]`` and targets, the
    same steps one on; what is left after the last whole window is dropped."""
    n = (len(ids) - 1) // bptt
    if n < 1:
        raise DataError(f"a text of {len(ids)} characters has no window of {bptt} steps (--bptt)")
    inputs = np.ascontiguousarray(ids[: n * bptt].reshape(n, bptt))
    targets = np.ascontiguousarray(ids[1 : n * bptt + 1].reshape(n, bptt))
    for array in (inputs, targets):
        array.flags.writeable = False
    return Split(inputs, targets)


def text_dataset(name: str, train: str, validation: str, test: str, *, bptt: int) -> Dataset:
    """The ``Dataset`` of three texts: the vocabulary is the training text's characters
    (and ``UNKNOWN`` when a held-out text has one it lacks)."""
    if not isinstance(bptt, int) or bptt < 1:
        raise DataError(f"bptt must be a positive int; got {bptt!r}")
    vocabulary = vocabulary_of(train)
    if any(set(t) - set(vocabulary) for t in (validation, test)):
        vocabulary += UNKNOWN
    splits = [windows(encode(t, vocabulary), bptt) for t in (train, validation, test)]
    size = len(vocabulary)
    return Dataset(
        name,
        *splits,
        num_classes=size,
        task="next_token",
        vocabulary=vocabulary,
        input_vocab=size,
    )


def from_text(
    text: str,
    *,
    bptt: int = 100,
    validation_split: float = 0.1,
    test_text: str | None = None,
    name: str = "text",
) -> Dataset:
    """A text (``str``) as the ``Dataset`` of a character-level language model.

    As Keras's ``validation_split``, the last ``validation_split`` of ``text`` is held out:
    its first half validates each epoch and its second tests the run; with ``test_text``, the
    whole held-out part validates and ``test_text`` tests.

    Raises:
      DataError: not a string, or too short for one window of each split.
    """
    if not isinstance(text, str):
        raise DataError(f"text must be a str; got {type(text).__name__}")
    if not 0 < validation_split < 1:
        raise DataError(
            f"validation_split must be strictly between 0 and 1; got {validation_split}"
        )
    cut = int(len(text) * (1 - validation_split))
    held = text[cut:]
    if test_text is None:
        half = len(held) // 2
        validation, test = held[:half], held[half:]
    else:
        validation, test = held, test_text
    for part, t in (("training", text[:cut]), ("validation", validation), ("test", test)):
        if len(t) <= bptt:
            raise DataError(
                f"the {part} part of the text has {len(t)} characters, not more than one "
                f"window of {bptt} (--bptt); give a longer text or a shorter bptt"
            )
    return text_dataset(name, text[:cut], validation, test, bptt=bptt)


def load_text_file(path: str | os.PathLike, *, bptt: int, validation_split: float) -> Dataset:
    """``from_text`` of a UTF-8 file, named by its path."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such text file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from e
    except OSError as e:
        raise DataError(f"{path} cannot be read: {e.strerror or e}") from e
    return from_text(text, bptt=bptt, validation_split=validation_split, name=str(path))
