"""A run as a ``jax.export`` artifact, served with ``jax`` alone: ``Run.export`` and
``train.py --workdir RUN --export FILE``.

``FILE`` holds the run's inference function, its weights inside, serialized as StableHLO
for the chosen platforms with the batch size symbolic (``b``), and the sequence length too
(``t``) where the model reads any length. ``FILE.json`` beside it says how to call it: the
inputs and outputs (shapes with ``b`` and ``t`` named, dtypes), what the inputs are, the
vocabulary of a text, the run it came from and the JAX that wrote it. What the function is:

* a run of images: ``f(images)``, ``uint8 [b, H, W, C]`` as TFDS gives them, read as the
  run's ``sequence`` inside; ``-> (logits, probabilities)``, ``[b, classes]`` (``[b, T,
  classes]`` with a label at every step), or ``-> values`` for a run of values;
* a run of your own sequences: ``f(x)`` (``f(x, lengths)`` if it trained with lengths),
  float32 ``[b, t, F]`` and int32 ``[b]``; the same outputs;
* a language model: ``f(ids, *state) -> (logits, *state)``, ids ``int32 [b, t]``, the
  state's arrays ``[b, units]`` (zeros to start), so that a prompt is read and text
  written one token a step from the file alone.

Loading needs ``jax`` of a compatible version (``jax.export``'s guarantees) and
``flatbuffers`` (its serialization), nothing of lstm_jax::

    exported = jax.export.deserialize(pathlib.Path(FILE).read_bytes())
    logits, probabilities = exported.call(images)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import data as data_lib
from lstm_jax import lstm_cudnn
from lstm_jax.errors import RunFileError
from lstm_jax.params import describe
from lstm_jax.training import calls as calls_lib
from lstm_jax.training import early_stopping, rundir, steps

# The platforms jax.export lowers for.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
FORMAT = "lstm_jax export 1"


def check_platforms(platforms) -> tuple[str, ...]:
    """``platforms`` as a tuple, refused unless a non-empty sequence of ``PLATFORMS``."""
    if isinstance(platforms, str):
        platforms = (platforms,)
    platforms = tuple(platforms) if isinstance(platforms, list | tuple) else None
    unknown = [p for p in platforms or () if p not in PLATFORMS]
    if not platforms or unknown or len(set(platforms)) < len(platforms):
        raise ValueError(
            f"platforms must be one or more of {', '.join(PLATFORMS)} (each once), the "
            f"platforms jax.export lowers for; got {unknown or platforms!r}"
        )
    return platforms


def finished(run) -> bool:
    """Whether ``run`` trained all its epochs, or stopped early as its settings asked."""
    history = run.history[: run.epoch]
    return run.epoch >= run.config.epochs or early_stopping.stopped(run.config, history)


def export_run(run, path: str | os.PathLike, *, platforms=("cpu", "cuda", "tpu")) -> dict:
    """Writes ``run``'s inference function to ``path`` and its description to
    ``path.json``; returns the description. See the module's docstring.

    Raises:
      ValueError: a platform ``jax.export`` does not know, or a run that has not finished
        (export its checkpoint once it has, or after ``--resume``).
      RunFileError: a file cannot be written; nothing is left half-written.
    """
    platforms = check_platforms(platforms)
    if not finished(run):
        raise ValueError(
            f"the run in {run.workdir} has not finished: its checkpoint is of epoch "
            f"{run.epoch} of {run.config.epochs}; finish it (train.py --workdir "
            f"{run.workdir} --resume) and export it then"
        )
    path = pathlib.Path(path)
    if path.is_dir():
        raise RunFileError(f"cannot write {path}: it is a directory; give a file name")
    with lstm_cudnn.portable():  # on a GPU too, the scan: it lowers for every platform
        function, args, inputs, outputs = _serving(run)
        exported = jax.export.export(jax.jit(function), platforms=platforms)(*args)
    description = {
        "format": FORMAT,
        "needs": "jax (of a version jax.export can load this with) and flatbuffers: "
        "pip install jax flatbuffers",
        "call": f"jax.export.deserialize(pathlib.Path(FILE).read_bytes()).call({_names(inputs)})",
        "inputs": inputs,
        "outputs": outputs,
        "task": run.task,
        "vocabulary": run.vocabulary,
        "platforms": list(platforms),
        "run": {
            "workdir": str(run.workdir.resolve()),
            "epoch": run.epoch,
            "model": describe(run.model),
            "config": dataclasses.asdict(run.config),
        },
        "jax_version": jax.__version__,
        "serialization_version": exported.calling_convention_version,
    }
    blob = exported.serialize()
    rundir.write_atomically(path, lambda tmp: tmp.write_bytes(blob))
    text = json.dumps(description, indent=1) + "\n"
    rundir.write_atomically(_json_path(path), lambda tmp: tmp.write_text(text))
    return json.loads(text)  # as the file holds it (the settings' tuples as lists)


def _json_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".json")


def _spec(name: str, shape, dtype, what: str) -> dict:
    return {
        "name": name,
        "shape": [d if isinstance(d, int) else str(d) for d in shape],
        "dtype": str(np.dtype(dtype)),
        "what": what,
    }


def _serving(run):
    """``(function, argument specs, inputs, outputs)``: the run's inference function of its
    inputs only (the weights are constants in it), the ``ShapeDtypeStruct``s it is exported
    at, and the inputs and outputs as the JSON describes them."""
    variables = {"params": run.params, **run.model_state}
    calls = run._calls
    rngs = calls_lib.eval_rngs(run.config.seed)
    if run.vocabulary is not None and calls.carries_state:
        return _language_model(run, variables, calls, rngs)
    b, t = jax.export.symbolic_shape("b, t")
    classes = run.num_classes
    if len(run.image_shape) == 3:  # images, read as the run's sequence
        h, w, c = run.image_shape
        specs = [jax.ShapeDtypeStruct((b, h, w, c), jnp.uint8)]
        inputs = [_spec("images", (b, h, w, c), np.uint8, "as TFDS gives them, 0-255")]

        def prepare(images):
            return data_lib.to_sequences(images, run.config.sequence), None
    else:  # the run's own sequences: any length, masked past each one's length if given
        features = run.input_shape[-1]
        specs = [jax.ShapeDtypeStruct((b, t, features), jnp.float32)]
        inputs = [_spec("x", (b, t, features), np.float32, "sequences, padded to t steps")]
        lengths = bool(run.data.get("lengths"))
        if lengths:
            specs.append(jax.ShapeDtypeStruct((b,), jnp.int32))
            inputs.append(_spec("lengths", (b,), np.int32, "each sequence's steps, 1 to t"))

        def prepare(x, lengths=None):
            mask = None if lengths is None else calls_lib.lengths_mask(lengths, x.shape[1])
            return x, mask

    def function(*args):
        x, mask = prepare(*args)
        logits = steps.eval_logits(run.model, calls, variables, x, rngs=rngs, mask=mask)
        logits = logits.astype(jnp.float32)
        if run.task == "regress":
            return logits
        return logits, jax.nn.softmax(logits, axis=-1)

    out = jax.eval_shape(function, *specs)
    if run.task == "regress":
        outputs = [_spec("values", out.shape, out.dtype, "the run's predicted values")]
    else:
        outputs = [
            _spec("logits", out[0].shape, np.float32, "scores before the softmax"),
            _spec("probabilities", out[1].shape, np.float32, f"of each of {classes} classes"),
        ]
    return function, specs, inputs, outputs


def _language_model(run, variables, calls, rngs):
    """A language model's step: ``(ids, *state) -> (logits, *state)``."""
    b, t = jax.export.symbolic_shape("b, t")
    ids = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def run_from(ids, state):
        out, _ = calls_lib.apply(
            run.model.apply, calls, variables, ids, train=False, rngs=rngs,
            initial_state=state, return_state=True,
        )  # fmt: skip
        return out

    _, state_shapes = jax.eval_shape(lambda ids: run_from(ids, None), ids)
    leaves, treedef = jax.tree.flatten(state_shapes)

    def function(ids, *state):
        logits, state = run_from(ids, jax.tree.unflatten(treedef, state))
        return (logits.astype(jnp.float32), *jax.tree.leaves(state))

    state_specs = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in leaves]
    vocab = len(run.vocabulary)
    inputs = [_spec("ids", (b, t), np.int32, f"token ids, 0 to {vocab - 1} (vocabulary)")]
    outputs = [_spec("logits", (b, t, vocab), np.float32, "the next token's, at every step")]
    for n, s in enumerate(leaves):
        what = "the model's state: zeros to start, then what the last call returned"
        inputs.append(_spec(f"state_{n}", s.shape, s.dtype, what))
        outputs.append(_spec(f"state_{n}", s.shape, s.dtype, "the state after the last id"))
    return function, [ids, *state_specs], inputs, outputs


def _names(specs: list[dict]) -> str:
    return ", ".join(s["name"] for s in specs)
