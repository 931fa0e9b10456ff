"""Log-likelihoods of many (context, continuation) requests, packed many to a row.

    rows = pack(requests, max_len=512, rows=8)            # host: fixed-shape batches of packed rows
    logprob, greedy = score(params, cfg, requests, ...)   # per request, in the requests' order

A request is (context ids, continuation ids), the continuation non-empty. Its tokens are
context + continuation, cut to the last max_len + 1 (lm-eval's `hf` backend does the same); the
model reads all but the last token and each continuation token is scored given everything
before it. Results: the sum of log p(continuation token) and whether every continuation token
is the argmax (greedy decoding would produce the continuation).

Packing: requests sorted by length, longest first, go first-fit into the `rows` rows of a
batch; a request that fits no row starts the next batch. A batch's rows all have length R, the
smallest of BUCKETS (powers of two from 32, and max_len) that holds its longest request, so a
run compiles one program per bucket. In a row, request k is segment k (1, 2, ...), positions
restart at 0 for each, and attention never crosses segments: the scores equal those of the
request alone in a row (tests/eval/test_packing.py). 0 marks padding.

Letters: B rows, R row length, D hidden, V vocab, C positions per logits chunk.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import model, sharding
from glm_jax.config import ModelConfig
from glm_jax.train.dpo import segment_sums
from glm_jax.train.loss import token_logprobs

MIN_BUCKET = 32
LOGITS_CHUNK = 512  # positions whose logits [B, C, V] exist at once


class RequestError(ValueError):
    """A request the model cannot serve; the message names it."""


def buckets(max_len: int) -> list[int]:
    """Row lengths: powers of two from MIN_BUCKET below max_len, then max_len."""
    out, r = [], MIN_BUCKET
    while r < max_len:
        out.append(r)
        r *= 2
    return out + [max_len]


def row_length(n: int, max_len: int) -> int:
    return next(b for b in buckets(max_len) if b >= n)


@dataclasses.dataclass
class Batch:
    """Host arrays [B, R] int32 (tokens, positions, segment_ids, targets, mask) and where each
    request landed: `where[k] = (request index, row, segment id)`."""
    arrays: dict[str, np.ndarray]
    where: list[tuple[int, int, int]]


def _tokens(context: Sequence[int], continuation: Sequence[int], max_len: int, name: str) -> tuple[list[int], int]:
    if not continuation:
        raise RequestError(f"{name}: the continuation is empty (nothing to score)")
    if len(continuation) > max_len:
        raise RequestError(f"{name}: the continuation has {len(continuation)} tokens, more than the model's "
                           f"context of {max_len}")
    whole = (list(context) + list(continuation))[-(max_len + 1):]
    if len(whole) < 2:
        raise RequestError(f"{name}: context + continuation is a single token; lm-eval gives an empty context "
                           f"the prefix token, pass one")
    return whole, len(continuation)


def pack(requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int, rows: int, packed: bool = True,
         names: Sequence[str] | None = None) -> list[Batch]:
    """Lays the requests out in batches of `rows` rows (module docstring); `packed=False` puts
    one request per row. `names[i]` names request i in errors (default `request i`)."""
    items = []
    for i, (ctx, cont) in enumerate(requests):
        whole, n_cont = _tokens(ctx, cont, max_len, names[i] if names else f"request {i}")
        items.append((i, whole, n_cont))
    items.sort(key=lambda it: (-(len(it[1]) - 1), it[0]))
    batches, open_rows, R = [], [], 0
    for i, whole, n_cont in items:
        n = len(whole) - 1
        if not open_rows:
            R = row_length(n, max_len)
        row = next((r for r, used in enumerate(open_rows) if packed and used[0] + n <= R), None)
        if row is None:
            if len(open_rows) == rows:
                batches.append((R, open_rows))
                open_rows, R = [], row_length(n, max_len)
            open_rows.append([0, []])
            row = len(open_rows) - 1
        open_rows[row][0] += n
        open_rows[row][1].append((i, whole, n_cont))
    if open_rows:
        batches.append((R, open_rows))
    return [_lay_out(R, content, rows) for R, content in batches]


def _lay_out(R: int, content: list, rows: int) -> Batch:
    a = {k: np.zeros((rows, R), np.int32) for k in ("tokens", "positions", "segment_ids", "targets", "mask")}
    where = []
    for r, (_, reqs) in enumerate(content):
        start = 0
        for seg, (i, whole, n_cont) in enumerate(reqs, start=1):
            n = len(whole) - 1
            s = slice(start, start + n)
            a["tokens"][r, s] = whole[:-1]
            a["targets"][r, s] = whole[1:]
            a["positions"][r, s] = np.arange(n)
            a["segment_ids"][r, s] = seg
            a["mask"][r, start + n - n_cont:start + n] = 1
            where.append((i, r, seg))
            start += n
    return Batch(a, where)


def _hidden(params: dict, tokens, positions, segment_ids, cfg: ModelConfig) -> jax.Array:
    # The one place the scorer calls the model (its config names: `cfg` is the model config).
    return model.hidden_states(params, tokens, cfg, positions, segment_ids)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _score_rows(params: dict, batch: dict, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """batch fields [B, R] -> (sum of masked log-probs, count of masked non-argmax targets), each
    [B, R + 1] by segment id."""
    x = _hidden(params, batch["tokens"], batch["positions"], batch["segment_ids"], cfg)
    B, R, D = x.shape
    C = min(LOGITS_CHUNK, R)
    while R % C:
        C //= 2
    kernel = params["output"]["kernel"]

    def chunk(xs):
        h, t = xs
        logits = model.output_logits(h, kernel)
        return token_logprobs(logits, t), (logits.argmax(-1) != t)

    split = lambda a: jnp.moveaxis(a.reshape(B, R // C, C, *a.shape[2:]), 1, 0)  # [N, B, C, ...]
    logp, miss = jax.lax.map(chunk, (split(x), split(batch["targets"])))
    logp, miss = (jnp.moveaxis(a, 0, 1).reshape(B, R) for a in (logp, miss))
    mask = batch["mask"].astype(jnp.float32)
    seg = batch["segment_ids"]
    return segment_sums(logp * mask, seg), segment_sums(miss.astype(jnp.float32) * mask, seg)


def score(params: dict, cfg: ModelConfig, requests: Sequence[tuple[Sequence[int], Sequence[int]]], mesh,
          max_len: int, rows: int, packed: bool = True, names: Sequence[str] | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(log-prob sums [N] float64, greedy [N] bool), in the requests' order, computed on `mesh`
    (params already sharded on it). Every request is checked before anything is computed."""
    batches = pack(requests, max_len, rows, packed, names)
    logprob = np.zeros(len(requests), np.float64)
    greedy = np.zeros(len(requests), bool)
    with jax.set_mesh(mesh):
        for b in batches:
            arrays = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.shape)) for k, v in b.arrays.items()}
            lp, miss = jax.device_get(_score_rows(params, arrays, cfg))
            for i, r, seg in b.where:
                logprob[i] = lp[r, seg]
                greedy[i] = miss[r, seg] == 0
    return logprob, greedy
