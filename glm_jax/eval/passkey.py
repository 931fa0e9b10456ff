"""Passkey retrieval: can the model find a number hidden at a given depth of a long context?

Each example is `[gMASK]<sop>` + an instruction + haystack text (real prose from the bundled
corpus) with the needle " The pass key is 71432. Remember it. 71432 is the pass key." inserted
at `depth` (0 = start, 1 = end of the haystack) + " What is the pass key? The pass key is" +
the digits, `length` tokens in all. It is scored, teacher forced and deterministic, by
  - `logprob`: mean log-probability per answer token, and
  - `accuracy`: whether greedy decoding would reproduce every digit (every answer token is the
    argmax given the correct ones before it, which is exactly greedy retrieval of the answer).

    results = evaluate(params, cfg, tokenizer, lengths=[512, 1024], depths=10, samples=4)
    save(results, "passkey.json", "passkey.png")

`training_texts` writes the same task as plain documents (other keys, other haystack offsets) for
teaching a small model retrieval before a long-context experiment (benchmarks/long_context.py).

Letters: N examples, T length, V vocab.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import storage
from glm_jax.config import ModelConfig, RunConfig
from glm_jax.data.paths import DATA_DIR
from glm_jax.model import hidden_states, logits_from_hidden

INSTRUCTION = ("There is an important piece of information hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about it.\n")
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is "
HAYSTACK = os.path.join(DATA_DIR, "corpus", "en.jsonl.gz")


@functools.lru_cache(maxsize=4)
def haystack_ids(tokenizer, path: str = HAYSTACK, max_docs: int = 400) -> np.ndarray:
    """The first `max_docs` documents of the haystack corpus, tokenized and joined: int32 [N]."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"haystack corpus {path!r} is missing (built by data/build_corpus.py)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(max_docs), f)]
    return np.concatenate([np.asarray(ids, np.int32) for ids in tokenizer.encode_batch(texts)])


def make_example(tokenizer, length: int, depth: float, key: int, offset: int = 0) -> tuple[np.ndarray, int]:
    """(ids [length], answer_start): the prompt with the needle at `depth` of the haystack and the
    answer digits at the end. `offset` picks where in the corpus the haystack is read from."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    prefix = [tokenizer.special_id("[gMASK]"), tokenizer.special_id("<sop>")] + tokenizer.encode(INSTRUCTION)
    needle = tokenizer.encode(NEEDLE.format(key=key))
    question, answer = tokenizer.encode(QUESTION), tokenizer.encode(str(key))
    filler_len = length - len(prefix) - len(needle) - len(question) - len(answer)
    if filler_len < 0:
        raise ValueError(f"length {length} is too short for the passkey prompt (needs > {length - filler_len})")
    hay = haystack_ids(tokenizer)
    start = offset % max(1, len(hay) - filler_len)
    filler = np.resize(hay[start:], filler_len) if filler_len else hay[:0]
    cut = int(round(depth * filler_len))
    ids = np.concatenate([prefix, filler[:cut], needle, filler[cut:], question, answer]).astype(np.int32)
    return ids, length - len(answer)


def training_texts(tokenizer, count: int, min_tokens: int, max_tokens: int, seed: int = 1) -> list[str]:
    """`count` passkey documents (text, no special tokens) of min_tokens..max_tokens tokens each,
    needle at a uniform depth, ending in the answer. Keys and haystack offsets come from `seed`;
    `evaluate` draws its keys from its own seed (default 0), so use another one here."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_tokens, max_tokens + 1, count)
    texts = []
    for length in lengths:
        key = int(rng.integers(10_000, 100_000))
        ids, _ = make_example(tokenizer, int(length) + 2, float(rng.random()), key, offset=int(rng.integers(1 << 30)))
        texts.append(tokenizer.decode(ids[2:]))  # without [gMASK]<sop>: a text task adds no specials
    return texts


@functools.partial(jax.jit, static_argnames=("cfg", "run", "answer_start"))
def _score(params, ids, cfg: ModelConfig, run: RunConfig, answer_start: int):
    """ids [N, T] -> (mean log-prob per answer token [N], all answer tokens greedy-correct [N])."""
    hidden = hidden_states(params, ids, cfg, run)[:, answer_start - 1:-1]  # logits only where answers are scored
    logits = logits_from_hidden(params, hidden)
    answer = ids[:, answer_start:]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), answer[..., None], axis=-1)[..., 0]
    return logp.mean(-1), (logits.argmax(-1) == answer).all(-1)


def evaluate(params: dict, cfg: ModelConfig, tokenizer, lengths: Sequence[int], depths: int | Sequence[float],
             samples: int = 4, seed: int = 0, run: RunConfig = RunConfig()) -> dict:
    """Scores every (length, depth); `depths` is a count (evenly spaced 0..1) or explicit fractions.

    Runs under whatever mesh is set (`jax.set_mesh`); params may be sharded."""
    depth_list = list(np.linspace(0, 1, depths)) if isinstance(depths, int) else list(depths)
    rng = np.random.default_rng(seed)
    keys = rng.integers(10_000, 100_000, samples)
    rows = []
    for length in lengths:
        for depth in depth_list:
            examples = [make_example(tokenizer, length, float(depth), int(k), offset=int(k) * 7) for k in keys]
            starts = {s for _, s in examples}
            if len(starts) != 1:  # answers of different token lengths: score one at a time
                scored = [_score(params, jnp.asarray(ids[None]), cfg, run, s) for ids, s in examples]
                logp = np.array([float(a[0]) for a, _ in scored])
                correct = np.array([bool(b[0]) for _, b in scored])
            else:
                logp, correct = map(np.asarray, _score(params, jnp.asarray(np.stack([e for e, _ in examples])),
                                                       cfg, run, starts.pop()))
            rows.append({"length": int(length), "depth": round(float(depth), 4), "accuracy": float(correct.mean()),
                         "logprob": float(logp.mean())})
    return {"model": cfg.name, "rope_theta": cfg.rope_theta, "samples": samples, "seed": seed, "results": rows}


def save(results: dict, json_path: str, png_path: str | None = None) -> None:
    """Writes the results as JSON and, if `png_path`, an accuracy heatmap (depth x length)."""
    storage.write_json(json_path, results)
    if png_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = results["results"]
        lengths = sorted({r["length"] for r in rows})
        depths = sorted({r["depth"] for r in rows})
        grid = np.full((len(depths), len(lengths)), np.nan)
        for r in rows:
            grid[depths.index(r["depth"]), lengths.index(r["length"])] = r["accuracy"]
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1 + 0.35 * len(depths)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"passkey accuracy: {results['model']} (rope theta {results['rope_theta']:g})")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        storage.write_bytes(png_path, buf.getvalue())
