"""Text from a language model (``linen.LanguageModel``, or any module whose ``__call__`` takes
``initial_state=`` and ``return_state=``): the prompt read once, then one jitted step per new
token that carries the state, so each token costs the same however long the text has grown.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def check_sampling(temperature, top_k, vocab_size: int) -> None:
    """Refuses a ``temperature`` below 0 (0: always the likeliest token) or not finite, and a
    ``top_k`` other than None or an int from 1 to ``vocab_size``."""
    ok = isinstance(temperature, int | float | np.floating) and not isinstance(temperature, bool)
    if not ok or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(
            f"temperature must be a finite number, 0 or more (0: the likeliest token each "
            f"time; 1: the model's own distribution); got {temperature!r}"
        )
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 1 <= top_k
    ):
        raise ValueError(f"top_k must be None or an int from 1 to {vocab_size}; got {top_k!r}")


def sample(logits: Array, key: Array, temperature: float, top_k: int | None) -> Array:
    """One token id per row of ``logits [batch, vocab]``: drawn from ``softmax(logits /
    temperature)``, among the ``top_k`` likeliest only if given; the likeliest at
    temperature 0."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


class Sampler:
    """Generation with one model and its variables: ``read(ids)`` reads a prompt (``[batch,
    time]`` ids) and returns ``(logits of the next token [batch, vocab], state)``;
    ``step(token, state)`` feeds one token per row and returns the same; ``generate`` strings
    them together. Both are jitted; ``step`` is compiled once."""

    def __init__(self, model: nn.Module, variables: dict, call_kwargs: dict | None = None):
        kwargs = dict(call_kwargs or {})

        def read(variables, ids, state):
            logits, state = model.apply(
                variables, ids, initial_state=state, return_state=True, **kwargs
            )
            return logits[:, -1].astype(jnp.float32), state

        self.variables = variables
        self._read = jax.jit(read)

    def read(self, ids, state: Any = None) -> tuple[Array, Any]:
        """``ids [batch, time]`` read from ``state`` (None: zeros): the next token's logits
        and the state after the last id."""
        return self._read(self.variables, jnp.asarray(ids, jnp.int32), state)

    def step(self, token: Array, state: Any) -> tuple[Array, Any]:
        """One token per row (``[batch]``) read from ``state``."""
        return self._read(self.variables, jnp.asarray(token, jnp.int32)[:, None], state)

    def generate(
        self,
        ids,
        length: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        on_token: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """``length`` new token ids ``[batch, length]`` after the prompt ``ids [batch,
        time]``, each drawn with ``sample`` from a key of ``seed`` and its position."""
        logits, state = self.read(ids)
        draw = jax.jit(functools.partial(sample, temperature=temperature, top_k=top_k))
        key = jax.random.key(seed)
        out = []
        for i in range(length):
            token = draw(logits, jax.random.fold_in(key, i))
            out.append(token)
            if on_token is not None:
                on_token(int(token[0]))
            if i + 1 < length:
                logits, state = self.step(token, state)
        if not out:
            return np.zeros((np.shape(ids)[0], 0), np.int32)
        return np.stack([np.asarray(t) for t in out], axis=1).astype(np.int32)
