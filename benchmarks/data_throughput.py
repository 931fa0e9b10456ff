"""Loader throughput (tokenize + pack + batch) on the bundled corpus vs the debug model's train step.

    JAX_PLATFORMS=cpu python benchmarks/data_throughput.py [--batches=200] [--steps=5] [--out=FILE.json]

Measures, on this host:
  tokenize   seqio Task -> ArrayRecord cache from scratch (once per corpus/tokenizer), tokens/s
  serve      make_iterator over the cache: read, slice, mix, first-fit pack, batch, tokens/s
             (tokens = every position of every [B, T] batch, padding included: what the step consumes)
  train      a jitted AdamW step of the debug model (configs/debug.py, fp32, masked next-token
             cross-entropy on the loader's batches) on this machine's default device, tokens/s
and prints serve / train: the loader is not the bottleneck when it is > 1. Writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from glm_jax import config, model  # noqa: E402
from glm_jax.data import loader  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_tokenize(cfg) -> dict:
    t0 = time.perf_counter()
    streams = loader.task_streams(cfg)  # builds the cache: cfg.data.cache_dir is empty here
    dt = time.perf_counter() - t0
    tokens = int(sum(s.cached.lengths.sum() for s in streams))
    return {"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt}


def measure_serve(cfg, batches: int) -> dict:
    it = loader.make_iterator(cfg, rows=range(cfg.train.batch_size))
    first = next(it)
    real = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        real += int((b["segment_ids"] > 0).sum())
    dt = time.perf_counter() - t0
    tokens = batches * first["tokens"].size
    return {"batches": batches, "seconds": dt, "tokens_per_s": tokens / dt, "fill": real / tokens}


def measure_train(cfg, steps: int) -> dict:
    mcfg = cfg.model
    params = model.init_params(mcfg, jax.random.key(0))
    opt = optax.adamw(cfg.train.lr, b1=cfg.train.adam_b1, b2=cfg.train.adam_b2, weight_decay=cfg.train.weight_decay)
    opt_state = opt.init(params)

    def loss_fn(p, b):
        logits = model.forward(p, b["tokens"], mcfg, positions=b["positions"], segment_ids=b["segment_ids"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
        return (ce * b["loss_mask"]).sum() / jnp.maximum(b["loss_mask"].sum(), 1.0)

    @jax.jit
    def step(p, s, b):
        loss, g = jax.value_and_grad(loss_fn)(p, b)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    it = loader.make_iterator(cfg, rows=range(cfg.train.batch_size))
    batches = [{k: jnp.asarray(v) for k, v in next(it).items()} for _ in range(steps + 1)]
    params, opt_state, loss = step(params, opt_state, batches[0])  # compile
    loss.block_until_ready()
    t0 = time.perf_counter()
    for b in batches[1:]:
        params, opt_state, loss = step(params, opt_state, b)
    loss.block_until_ready()
    dt = time.perf_counter() - t0
    tokens = steps * batches[0]["tokens"].size
    return {"steps": steps, "seconds": dt, "tokens_per_s": tokens / dt, "loss": float(loss),
            "device": str(jax.devices()[0].device_kind)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default="")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cfg = config.load(os.path.join(REPO, "configs", "debug.py"), [f"data.cache_dir={cache!r}"])
        result = {"config": "configs/debug.py", "mixture": cfg.data.mixture,
                  "batch": [cfg.train.batch_size, cfg.train.seq_len],
                  "tokenize": measure_tokenize(cfg), "serve": measure_serve(cfg, args.batches),
                  "train": measure_train(cfg, args.steps)}
    result["serve_over_train"] = result["serve"]["tokens_per_s"] / result["train"]["tokens_per_s"]
    print(f"{'stage':<10} {'tokens/s':>12}  notes")
    print(f"{'tokenize':<10} {result['tokenize']['tokens_per_s']:>12,.0f}  once per corpus+tokenizer "
          f"({result['tokenize']['tokens']:,} tokens in {result['tokenize']['seconds']:.1f} s)")
    print(f"{'serve':<10} {result['serve']['tokens_per_s']:>12,.0f}  read+mix+pack+batch, "
          f"{100 * result['serve']['fill']:.1f}% of positions are real tokens")
    print(f"{'train':<10} {result['train']['tokens_per_s']:>12,.0f}  debug model step on {result['train']['device']}")
    print(f"serve / train = {result['serve_over_train']:.1f}x "
          f"({'loader is not the bottleneck' if result['serve_over_train'] > 1 else 'LOADER IS THE BOTTLENECK'})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
