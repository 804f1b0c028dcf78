"""Using a run: resuming it (``resume_config``) and loading it to predict (``load_run``).
What its directory holds is ``rundir``'s to say.

Arrays are restored onto the loading process's own devices, whatever the run trained on::

    run = load_run("runs/lesson")
    run.predict(mnist.test.images[:8])  # uint8 [8, 28, 28, 1] -> class ids [8]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import data as data_lib
from lstm_jax.errors import ConfigError
from lstm_jax.training import calls as calls_lib
from lstm_jax.training import export, optim, sharding, steps
from lstm_jax.training.checkpoints import (
    Checkpointer,
    CheckpointError,
    CheckpointGone,
)
from lstm_jax.training.config import Config, check_resume
from lstm_jax.training.rundir import module_from_spec, read_meta


def check_against_run(config: Config, workdir: pathlib.Path) -> dict:
    """The meta of the run to resume in ``workdir``, after checking ``config`` against it."""
    _, epoch, meta = read_meta(workdir)
    check_resume(Config(**meta["config"]), config, len(meta["history"][:epoch]))
    return meta


def resume_config(workdir: str | os.PathLike, **changes: Any) -> Config:
    """The ``Config`` of the run in ``workdir``, with ``changes`` (settings in
    ``RESUMABLE``; others are accepted when equal to the run's) and ``resume=True``.

    Reads files only, so it can run before JAX starts its backends.

    Raises:
      CheckpointError: no run to resume there; ConfigError: a change not allowed.
    """
    _, epoch, meta = read_meta(workdir)  # writes nothing: the run may be read-only
    saved = Config(**meta["config"])
    try:
        config = dataclasses.replace(saved, **{**changes, "resume": True})
    except TypeError as e:
        raise ConfigError("resume", f"resume_config: {e}") from e
    config.validate()
    check_resume(saved, config, len(meta["history"][:epoch]))
    return config


# --------------------------------------------------------------------------------------
# Loading a run
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class Run:
    """A trained model with what it was trained on; ``load_run`` makes one.

    ``params`` are on the loading process's default device (with early stopping, the best
    epoch's), ``model_state`` the model's other collections (e.g. ``batch_stats``).
    ``config`` is the run's ``training.Config``, ``history`` its per-epoch records,
    ``epoch`` the checkpoint's; ``data`` what the run's data was (``new_meta``).
    """

    workdir: pathlib.Path
    model: nn.Module
    params: Any
    config: Any
    history: list[dict]
    epoch: int
    num_classes: int
    image_shape: tuple[int, ...]
    input_shape: tuple[int, int]
    model_state: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        variables = {"params": self.params, **self.model_state}
        calls = steps.model_calls(self.model, self.input_shape, variables)
        self._calls = calls

        def logits(variables, x, mask):
            rngs = calls_lib.eval_rngs(self.config.seed)
            return steps.eval_logits(self.model, calls, variables, x, rngs=rngs, mask=mask)

        self._logits = jax.jit(logits)
        self._sampler_made = None

    @property
    def nnx_model(self):
        """The run's model as a Flax NNX model (``lstm_jax.nnx``) holding its parameters, in
        evaluation mode (no dropout; ``.train()`` turns it on), for a model made of
        lstm_jax's layers (as every model ``train.py`` trains, and any ``lstm_jax.nnx``
        model given to ``train_and_evaluate``)."""
        from lstm_jax import nnx as lnnx

        variables = {"params": jax.device_get(self.params)}
        return lnnx.from_linen(self.model, variables, self.input_shape[-1])

    @property
    def task(self) -> str:
        """What the run learned (``tasks.TASKS``); ``classify`` for runs made before tasks."""
        return self.data.get("task") or "classify"

    @property
    def vocabulary(self) -> str | None:
        """A text run's characters, id ``i`` being ``vocabulary[i]``; None for other runs."""
        return self.data.get("vocabulary")

    def _sampler(self):
        """The run's ``sampling.Sampler`` (a language model's), made once."""
        if self.vocabulary is None or not self._calls.carries_state:
            raise ValueError(
                f"generate reads and writes text: the run in {self.workdir} is a "
                f"{self.task} run of a {type(self.model).__name__}, not a language model of "
                "a text (train.py --dataset tiny_shakespeare, or --dataset FILE.txt)"
            )
        if self._sampler_made is None:
            from lstm_jax import sampling

            variables = {"params": self.params, **self.model_state}
            self._sampler_made = sampling.Sampler(
                self.model, variables, self._calls.kwargs(train=False)
            )
        return self._sampler_made

    def generate(
        self,
        prompt: str,
        length: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
    ) -> str:
        """``length`` characters that the run's language model writes after ``prompt``
        (which it reads once), one jitted step per character with the state carried; each
        drawn from the model's distribution sharpened by ``temperature`` (below 1: safer; 0:
        the likeliest character each time), among the ``top_k`` likeliest if given, from
        ``seed``. Returns the new characters (not the prompt).

        Raises:
          ValueError: not a language model's run, an empty prompt, or a bad setting.
          DataError: the prompt holds characters outside the run's vocabulary.
        """
        from lstm_jax import sampling
        from lstm_jax.data import text

        sampler = self._sampler()
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt must be a non-empty str; got {prompt!r}")
        if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 0:
            raise ValueError(f"length must be an int, 0 or more; got {length!r}")
        sampling.check_sampling(temperature, top_k, len(self.vocabulary))
        ids = text.encode(prompt, self.vocabulary, what="the prompt")[None]
        out = sampler.generate(ids, int(length), temperature=temperature, top_k=top_k, seed=seed)
        return text.decode(out[0], self.vocabulary)

    def next_probabilities(self, text_: str) -> np.ndarray:
        """``[len(text_), vocab]``: after each character of ``text_``, the probability the
        run's language model gives each next character (reading the whole text at once)."""
        from lstm_jax.data import text

        self._sampler()
        ids = text.encode(text_, self.vocabulary, what="the text")[None]
        return np.asarray(jax.nn.softmax(self.logits(ids)[0], axis=-1))

    def sequences(self, inputs) -> jax.Array:
        """``inputs`` as the model reads them, float32 ``[N, T, F]``: ``uint8`` images
        ``[N, H, W]`` or ``[N, H, W, C]`` (as TFDS gives them) are scaled to ``[0, 1]`` and
        read as the run's ``config.sequence``; floating-point ``[N, T, F]`` are taken as
        already prepared."""
        x = np.asarray(inputs)
        if len(self.input_shape) == 1:
            if not (np.issubdtype(x.dtype, np.integer) and x.ndim == 2):
                raise ValueError(f"expected token ids, ints [N, T]; got {x.dtype} {list(x.shape)}")
            return jnp.asarray(x, jnp.int32)
        if len(self.image_shape) == 2:
            return self._own_sequences(x)
        h, w, c = self.image_shape
        image, floating = ((h, w), (h, w, c)), np.issubdtype(x.dtype, np.floating)
        if x.dtype == np.uint8 and x.ndim in (3, 4) and x.shape[1:] in image:
            return data_lib.to_sequences(x.reshape(-1, h, w, c), self.config.sequence)
        if floating and x.ndim == 3 and x.shape[1:] == self.input_shape:
            x = np.asarray(_finite(x))
            low, high = (float(f(x, initial=0.0)) for f in (np.min, np.max))
            if not (low >= 0.0 and high <= 1.0):  # NaN fails too
                raise ValueError(
                    f"float sequences must be in [0, 1], as the run's data was (its uint8 "
                    f"images / 255); got values from {low:g} to {high:g}: pass the uint8 "
                    "images as they are, or divide by 255"
                )
            return jnp.asarray(x, jnp.float32)
        if (x.dtype == np.uint8 and x.shape in image) or (floating and x.shape == self.input_shape):
            what = "image" if x.dtype == np.uint8 else "sequence"
            raise ValueError(
                f"expected a batch; got one {what} {list(x.shape)}: add a batch axis "
                f"(inputs[None], of shape {[1, *x.shape]})"
            )
        n = "N" if x.ndim == 0 else x.shape[0]
        raise ValueError(
            f"expected uint8 images [{n}, {h}, {w}] or [{n}, {h}, {w}, {c}], or float sequences "
            f"[{n}, {', '.join(map(str, self.input_shape))}] in [0, 1]; got {x.dtype} "
            f"{list(x.shape)}"
        )

    def _own_sequences(self, x: np.ndarray) -> jax.Array:
        """``sequences`` for a run of your own sequences: float ``[N, T, F]``, ``T`` any
        length (padding beyond each sequence's length is masked)."""
        features = self.input_shape[-1]
        if not (np.issubdtype(x.dtype, np.floating) and x.ndim == 3 and x.shape[2] == features):
            raise ValueError(
                f"expected float sequences [N, T, {features}], as the run's data; got "
                f"{x.dtype} {list(x.shape)}"
            )
        return _finite(x)

    def _mask(self, lengths, x: jax.Array) -> jax.Array | None:
        if lengths is None and self.data.get("lengths"):
            raise ValueError(
                f"lengths: the run trained on sequences of given lengths, each masked past its "
                f"length, so its predictions need them too: lengths=[N] ints (the full "
                f"{x.shape[1]} for a sequence without padding)"
            )
        if lengths is None:
            return None
        lengths = np.asarray(lengths)
        if not self._calls.takes_mask:
            raise ValueError(
                f"lengths: the run's model, a {type(self.model).__name__}, takes no mask"
            )
        if lengths.shape != x.shape[:1] or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(
                f"lengths must be ints, one per sequence ([{len(x)}]); got {lengths.dtype} "
                f"{list(lengths.shape)}"
            )
        if len(lengths) and ((lengths < 1).any() or (lengths > x.shape[1]).any()):
            raise ValueError(f"lengths must be from 1 to {x.shape[1]} (the sequences' steps)")
        return calls_lib.lengths_mask(lengths, x.shape[1])

    def logits(self, inputs, *, lengths=None, batch_size: int = 1024) -> np.ndarray:
        """The model's output for ``inputs`` (see ``sequences``), ``[N, num_classes]`` (or
        the task's: ``[N, T, num_classes]`` at every step, values for ``regress``),
        computed ``batch_size`` examples at a time; ``lengths`` (ints ``[N]``) masks each
        sequence's steps from its length on, as the run's data was."""
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int | np.integer)
            or (batch_size < 1)
        ):
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        x = self.sequences(inputs)
        mask = self._mask(lengths, x)
        variables = {"params": self.params, **self.model_state}
        out = [
            self._logits(
                variables,
                x[i : i + batch_size],
                None if mask is None else mask[i : i + batch_size],
            )
            for i in range(0, len(x), batch_size)
        ]
        if not out:
            shape = jax.eval_shape(
                self._logits, variables, x[:1], None if mask is None else mask[:1]
            )
            return np.zeros((0, *shape.shape[1:]), np.float32)
        return np.concatenate([np.asarray(o) for o in out])

    def predict_proba(self, inputs, *, lengths=None, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities ``[N, num_classes]`` (the softmax of ``logits``)."""
        logits = self.logits(inputs, lengths=lengths, batch_size=batch_size)
        return np.asarray(jax.nn.softmax(logits, axis=-1))

    def predict(self, inputs, *, lengths=None, batch_size: int = 1024) -> np.ndarray:
        """Class ids ``[N]`` for ``inputs``: uint8 images or prepared sequences (with
        ``lengths``, as ``logits``)."""
        return np.argmax(self.logits(inputs, lengths=lengths, batch_size=batch_size), axis=-1)

    def export(self, path: str | os.PathLike, *, platforms=("cpu", "cuda", "tpu")) -> dict:
        """Writes the run's inference function to ``path`` as a ``jax.export`` artifact (its
        weights inside, the batch size symbolic), and how to call it to ``path.json``, to
        serve without lstm_jax, Flax, optax or orbax: ``lstm_jax.training.export``.
        Returns what ``path.json`` holds.

        Raises:
          ValueError: a platform ``jax.export`` does not know, or a run not finished.
          RunFileError: a file cannot be written.
        """
        return export.export_run(self, path, platforms=platforms)

    def evaluate(
        self,
        split: str = "test",
        *,
        data_dir: str | None = None,
        download: bool = True,
        data: data_lib.Dataset | None = None,
    ):
        """The task's numbers on a split of the run's data set (``test``, ``validation`` or
        ``train``): ``{"split", "examples", "loss", "accuracy"}`` for a classifier (``mae``
        for values; ``bits`` and ``perplexity`` too for a language model). A run of your own
        arrays needs them again: ``data``."""
        if data is None and self.data.get("from_arrays"):
            raise ConfigError(
                "data",
                f"the run trained on your own arrays ({self.data.get('name')}), which it does "
                "not keep: evaluate(split, data=data.from_arrays(...)) with them",
            )
        return steps.evaluate_params(
            self.config,
            self.model,
            self.params,
            split,
            data_dir=data_dir,
            download=download,
            data=data,
            model_state=self.model_state,
        )


def _finite(x: np.ndarray) -> jax.Array:
    """``x`` as float32, refused if any value is NaN or infinite (or becomes infinite)."""
    x32 = data_lib.float32(x)
    if not np.isfinite(x32).all():
        raise ValueError(
            "inputs hold NaN or infinite values (or values beyond float32's range, 3.4e38), "
            "as the run's data could not: give finite values (pad with 0)"
        )
    return jnp.asarray(x32)


def load_run(workdir: str | os.PathLike, *, model: nn.Module | None = None) -> Run:
    """The newest checkpoint of the run in ``workdir``, ready to predict with.

    ``model`` is needed only when the run's model class cannot be imported here (one
    defined in a notebook or script); it must be the module the run trained.

    A run that is still training can be loaded: if the checkpoint being read is removed
    meanwhile (a run keeps its newest three), the newest one is read instead. Nothing is
    written to ``workdir``, which may be read-only.

    Raises:
      CheckpointError: no run, no finished checkpoint, another checkpoint format, or a
        corrupt checkpoint; says which.
    """
    for _ in range(_READS):
        try:
            return _load_newest(workdir, model)
        except CheckpointGone as gone:
            error = gone
    raise CheckpointError(
        f"{error}, {_READS} times: the run in {workdir} replaces its checkpoints faster than "
        "they can be read; load it when it has ended"
    )


_READS = 5  # tries at a checkpoint that a running run removes while it is read


def _load_newest(workdir: str | os.PathLike, model: nn.Module | None) -> Run:
    directory, epoch, meta = read_meta(workdir)
    config = Config(**meta["config"])
    if model is None:
        try:
            model = module_from_spec(meta["model"])
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    input_shape = tuple(meta["input_shape"])
    abstract = jax.eval_shape(lambda: steps.create_train_state(config, model, input_shape))
    sharding.devices()  # starts JAX's backends: a platform that cannot start is DeviceError
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
    )
    checkpointer = Checkpointer(directory, read_only=True)
    try:
        state, meta = checkpointer.restore(epoch, optim.saved_shapes(abstract))
    finally:
        checkpointer.close()
    # With early stopping, the best epoch's weights; else the state's own.
    weights = getattr(state, "best", None) or {
        "params": state.params,
        "model_state": getattr(state, "model_state", {}),
    }
    return Run(
        workdir=directory.parent,
        model=model,
        params=weights["params"],
        model_state=dict(weights["model_state"]),
        data=dict(meta.get("data", {})),
        config=config,
        history=list(meta["history"]),
        epoch=epoch,
        num_classes=int(meta["num_classes"]),
        image_shape=tuple(meta["image_shape"]),
        input_shape=input_shape,
    )
