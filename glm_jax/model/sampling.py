"""Batched generation with the KV cache: prefill, then one jitted step per token.

    out = generate(params, cfg, [[...prompt ids...], ...], max_new_tokens=32, temperature=0.0)

Sampling: temperature 0 is greedy; otherwise logits / temperature, then top-k (0 = off) and
top-p (nucleus; 1.0 = off). A row stops at its first token in `stop_ids` (kept in the output).
Letters: B batch, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.config import ModelConfig, RunConfig
from glm_jax.model import decode


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample(logits: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
    """logits [B, V] fp32 -> token ids [B] int32."""
    if s.temperature == 0:
        return logits.argmax(-1).astype(jnp.int32)
    logits = logits / s.temperature
    if s.top_k:
        kth = jax.lax.top_k(logits, s.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if s.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        cutoff_index = jnp.sum(cum - jax.nn.softmax(sorted_logits, axis=-1) < s.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "run", "s"))
def _prefill(params, tokens, lengths, cache, key, cfg: ModelConfig, run: RunConfig, s: Sampling):
    logits, cache = decode.extend(params, tokens, cache, cfg, run)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return sample(last, key, s), decode.set_lengths(cache, lengths)


@functools.partial(jax.jit, static_argnames=("cfg", "run", "s"), donate_argnums=(2,))
def _step(params, token, cache, key, cfg: ModelConfig, run: RunConfig, s: Sampling):
    logits, cache = decode.extend(params, token[:, None], cache, cfg, run)
    return sample(logits[:, 0], key, s), cache


def generate(params: dict, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             sampling: Sampling = Sampling(), stop_ids: Sequence[int] = (), key: jax.Array | None = None,
             should_stop: Callable[[int, list[int]], bool] | None = None, rows: int = 0, prompt_len: int = 0,
             run: RunConfig = RunConfig()) -> list[list[int]]:
    """Returns each prompt's new tokens (up to and including a stop token).

    `should_stop(i, new_tokens)`, asked on the host after each token of a running row i, ends
    that row early when true (e.g. at a stop string; its last token is kept). `rows` and
    `prompt_len` pad the batch to at least that many rows and positions, so that batches of
    several sizes share one compiled prefill and step. `run` picks the compute dtype (the cache's too)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    key = jax.random.key(0) if key is None else key
    n = len(prompts)
    lengths = np.ones(max(n, rows), np.int32)  # padding rows: one token, done from the start
    lengths[:n] = [len(p) for p in prompts]
    padded = np.zeros((len(lengths), max(int(lengths.max()), prompt_len)), np.int32)
    for i, p in enumerate(prompts):
        padded[i, :len(p)] = p
    cache = decode.init_cache(cfg, len(lengths), padded.shape[1] + max_new_tokens, run)
    key, sub = jax.random.split(key)
    token, cache = _prefill(params, jnp.asarray(padded), jnp.asarray(lengths), cache, sub, cfg, run, sampling)
    stop = np.array(list(stop_ids), np.int32)
    out: list[list[int]] = [[] for _ in range(n)]
    done = np.arange(len(lengths)) >= n
    for i in range(max_new_tokens):
        host = np.asarray(token)
        for r in np.flatnonzero(~done):
            out[r].append(int(host[r]))
            if host[r] in stop or (should_stop is not None and should_stop(int(r), out[r])):
                done[r] = True
        if done.all() or i == max_new_tokens - 1:
            break
        key, sub = jax.random.split(key)
        token, cache = _step(params, token, cache, sub, cfg, run, sampling)
    return out
