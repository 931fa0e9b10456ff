"""Log-likelihoods of many (context, continuation) requests, packed many to a row.

    rows = pack(requests, max_len=512, rows=8)            # host: fixed-shape batches of packed rows
    logprob, greedy = score(params, cfg, requests, ..., run=run)   # per request, in the requests' order

A request is (context ids, continuation ids), the continuation non-empty. Its tokens are
context + continuation, cut to the last max_len + 1 (lm-eval's `hf` backend does the same); the
model reads all but the last token and each continuation token is scored given everything
before it. Results: the sum of log p(continuation token) and whether every continuation token
is the argmax (greedy decoding would produce the continuation).

Packing: requests sorted by length, longest first, go first-fit into the `rows` rows of a
batch; a request that fits no row starts the next batch. A batch's rows all have length R, the
smallest of BUCKETS (powers of two from 32, and max_len) that holds its longest request, so a
run compiles one program per bucket (and per size bucket of the scored positions). In a row,
request k is segment k (1, 2, ...), positions restart at 0 for each, and attention never
crosses segments: the scores equal those of the request alone in a row
(tests/eval/test_packing.py). 0 marks padding. Requests that read the same tokens and score one
token (a multiple-choice question's options " A" .. " D") share one segment: the model reads
the question once. Logits are computed only at the scored positions, gathered from the rows.

Letters: B rows, R row length, D hidden, V vocab, P scored positions (padded), C positions per
logits chunk.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np

from glm_jax import model, sharding
from glm_jax.config import ModelConfig, RunConfig
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
    """Host arrays: tokens, positions, segment_ids [B, R] int32 and the scored positions
    score_row, score_pos, score_token [P] int32 (padding entries read row 0, position 0); entry
    e scores request `score_request[e]` (-1: padding)."""
    arrays: dict[str, np.ndarray]
    score_request: np.ndarray


def score_bucket(n: int) -> int:
    """P for n scored positions: a power of two >= 64 (few compiled shapes)."""
    return max(64, 1 << (n - 1).bit_length())


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
    one request per row and shares nothing. `names[i]` names request i in errors (default
    `request i`)."""
    items, shared = [], {}  # shared: input tokens of a one-token request -> its item
    for i, (ctx, cont) in enumerate(requests):
        whole, n_cont = _tokens(ctx, cont, max_len, names[i] if names else f"request {i}")
        key = tuple(whole[:-1]) if packed and n_cont == 1 else None
        if key is not None and key in shared:
            shared[key][3].append((i, whole[-1]))
            continue
        items.append((i, whole, n_cont, []))
        if key is not None:
            shared[key] = items[-1]
    items.sort(key=lambda it: (-(len(it[1]) - 1), it[0]))
    batches, open_rows, R = [], [], 0
    for item in items:
        n = len(item[1]) - 1
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
        open_rows[row][1].append(item)
    if open_rows:
        batches.append((R, open_rows))
    return [_lay_out(R, content, rows) for R, content in batches]


def _lay_out(R: int, content: list, rows: int) -> Batch:
    a = {k: np.zeros((rows, R), np.int32) for k in ("tokens", "positions", "segment_ids")}
    scored = []  # (request, row, position, token)
    for r, (_, reqs) in enumerate(content):
        start = 0
        for seg, (i, whole, n_cont, sharing) in enumerate(reqs, start=1):
            n = len(whole) - 1
            a["tokens"][r, start:start + n] = whole[:-1]
            a["positions"][r, start:start + n] = np.arange(n)
            a["segment_ids"][r, start:start + n] = seg
            for k in range(n - n_cont, n):
                scored.append((i, r, start + k, whole[k + 1]))
            scored += [(j, r, start + n - 1, token) for j, token in sharing]
            start += n
    P = score_bucket(len(scored))
    cols = np.zeros((4, P), np.int32)
    cols[0] = -1
    cols[:, :len(scored)] = np.asarray(scored, np.int32).T
    a.update(score_row=cols[1], score_pos=cols[2], score_token=cols[3])
    return Batch(a, cols[0])


def _hidden(params: dict, tokens, positions, segment_ids, cfg: ModelConfig, run: RunConfig) -> jax.Array:
    return model.hidden_states(params, tokens, cfg, run, positions, segment_ids)


@functools.partial(jax.jit, static_argnames=("cfg", "run"))
def _score_positions(params: dict, batch: dict, cfg: ModelConfig, run: RunConfig) -> tuple[jax.Array, jax.Array]:
    """Batch fields (see Batch) -> (log p(score_token) [P], score_token is the argmax [P])."""
    x = _hidden(params, batch["tokens"], batch["positions"], batch["segment_ids"], cfg, run)
    h = x[batch["score_row"], batch["score_pos"]]  # [P, D]
    P, D = h.shape
    C = min(LOGITS_CHUNK, P)
    kernel = params["output"]["kernel"]

    def chunk(xs):
        hc, t = xs
        logits = model.output_logits(hc[None], kernel)[0]  # [C, V]
        return token_logprobs(logits, t), logits.argmax(-1) == t

    logp, hit = jax.lax.map(chunk, (h.reshape(P // C, C, D), batch["score_token"].reshape(P // C, C)))
    return logp.reshape(P), hit.reshape(P)


def score(params: dict, cfg: ModelConfig, requests: Sequence[tuple[Sequence[int], Sequence[int]]], mesh,
          max_len: int, rows: int, packed: bool = True, names: Sequence[str] | None = None,
          run: RunConfig = RunConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(log-prob sums [N] float64, greedy [N] bool), in the requests' order, computed on `mesh`
    (params already sharded on it). Every request is checked before anything is computed."""
    batches = pack(requests, max_len, rows, packed, names)
    logprob = np.zeros(len(requests), np.float64)
    misses = np.zeros(len(requests), np.int64)
    with jax.set_mesh(mesh):
        for b in batches:
            arrays = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.shape) if v.ndim == 2
                                        else sharding.replicated(mesh)) for k, v in b.arrays.items()}
            lp, hit = jax.device_get(_score_positions(params, arrays, cfg, run))
            real = b.score_request >= 0
            np.add.at(logprob, b.score_request[real], lp[real].astype(np.float64))
            np.add.at(misses, b.score_request[real], (~hit[real]).astype(np.int64))
    return logprob, misses == 0
