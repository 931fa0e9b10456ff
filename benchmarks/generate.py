"""Decode throughput on CPU: our KV-cache generation vs transformers' `generate` on the exported model.

    python benchmarks/generate.py [--new-tokens=64] [--batch=1] [--out=benchmarks/results/generate.json]

Same weights (ours exported with glm_jax.convert.hf), same prompt, greedy, same number of new
tokens; prefill excluded from neither (both timed end to end after one warm-up call). Prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from glm_jax import config, model  # noqa: E402
from glm_jax.convert import hf  # noqa: E402
from glm_jax.model import sampling  # noqa: E402

MODELS = {
    "debug": ["configs/debug.py", []],
    "150M": ["configs/debug.py", ["model.vocab_size=32768", "model.hidden_size=768", "model.num_layers=12",
                                  "model.num_heads=12", "model.kv_groups=2", "model.head_dim=64",
                                  "model.ffn_hidden_size=2560", "model.max_seq_len=1024"]],
}


def _time(fn, repeats):
    fn()  # warm-up (compile / first-call overhead)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(name, path, overrides, prompt_len, new_tokens, batch, repeats):
    import torch
    import transformers

    cfg = config.load(path, overrides).model
    params = model.init_params(cfg, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len))
    ours_out = []

    def ours():
        ours_out[:] = sampling.generate(params, cfg, prompts.tolist(), new_tokens)

    t_ours = _time(ours, repeats)
    with tempfile.TemporaryDirectory() as d:
        hf.export(jax.tree.map(np.asarray, params), cfg, os.path.join(d, "m"))
        theirs_model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(d, "m")).eval()
    theirs_out = []

    def theirs():
        with torch.no_grad():
            theirs_out[:] = theirs_model.generate(torch.as_tensor(prompts), max_new_tokens=new_tokens,
                                                  min_new_tokens=new_tokens, do_sample=False).tolist()

    t_theirs = _time(theirs, repeats)
    same = [row[prompt_len:] for row in theirs_out] == ours_out
    tokens = batch * new_tokens
    return {"model": name, "params": model.param_count(cfg), "batch": batch, "prompt_len": prompt_len,
            "new_tokens": new_tokens, "ours_tok_s": tokens / t_ours, "hf_tok_s": tokens / t_theirs,
            "ratio_ours_over_hf": t_theirs / t_ours, "same_tokens": same,
            "torch_threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="debug,150M")
    p.add_argument("--out", default="benchmarks/results/generate.json")
    a = p.parse_args()
    rows = [bench(m, *MODELS[m], a.prompt_len, a.new_tokens, a.batch, a.repeats) for m in a.models.split(",")]
    print(f"{'model':8} {'params':>12} {'ours tok/s':>11} {'HF tok/s':>9} {'ours/HF':>8} same tokens")
    for r in rows:
        print(f"{r['model']:8} {r['params']:>12,} {r['ours_tok_s']:>11.1f} {r['hf_tok_s']:>9.1f} "
              f"{r['ratio_ours_over_hf']:>8.2f} {r['same_tokens']}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"device": jax.devices()[0].device_kind, "rows": rows}, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
