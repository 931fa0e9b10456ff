"""Our jitted fp32 train step vs transformers' GlmForCausalLM + torch AdamW, same model, same CPU.

    python benchmarks/train_step_vs_hf.py [--steps=5] [--out=train_step_vs_hf.json]

Model: vocab 32768, hidden 768, ffn 2560, 12 layers, 12 heads, 2 kv heads, head dim 64, partial
rotary 0.5; batch 4 x 512 tokens; fp32; AdamW with global-norm clipping in both. Also times each
framework's fp32 2048x2048 matmul to give the machine's peak as each framework sees it. Prints
tokens/s of both, their ratio, and each one's fraction of its matmul peak; writes JSON.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from glm_jax import sharding  # noqa: E402
from glm_jax.config import Config, MeshConfig, ModelConfig, TrainConfig  # noqa: E402
from glm_jax.train import metrics, optimizer, state as state_lib, step as step_lib  # noqa: E402

B, T = 4, 512
MODEL = ModelConfig(name="bench", vocab_size=32768, hidden_size=768, num_layers=12, num_heads=12, kv_groups=2,
                    head_dim=64, ffn_hidden_size=2560, rms_norm_eps=1e-5, rotary_fraction=0.5, max_seq_len=T)


def _time(fn, steps):
    fn()  # warm-up / compile
    fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def jax_matmul_flops(n=2048, reps=20):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n ** 3 / _time(lambda: f(a).block_until_ready(), reps)


def torch_matmul_flops(n=2048, reps=20):
    import torch

    a = torch.randn(n, n)
    return 2 * n ** 3 / _time(lambda: torch.mm(a, a), reps)


def batch_arrays(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, MODEL.vocab_size, size=(B, T + 1), dtype=np.int32)
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
            "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
            "segment_ids": np.ones((B, T), np.int32), "loss_mask": np.ones((B, T), np.float32)}


def ours(steps):
    cfg = Config(model=MODEL, mesh=MeshConfig(fsdp=1),
                 train=TrainConfig(seq_len=T, batch_size=B, steps=10_000, warmup_steps=10, lr=1e-4))
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    tx = optimizer.make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        box = {"state": state_lib.init_state(cfg, mesh, tx)}
        fn = step_lib.make_train_step(cfg, mesh, tx=tx)
        batch = sharding.global_batch(batch_arrays(), mesh, B)

        def one():
            box["state"], m = fn(box["state"], batch)
            jax.block_until_ready(m["loss"])

        return _time(one, steps), metrics.train_flops_per_token(MODEL, T) * B * T


def hf(steps):
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(0)
    hf_cfg = GlmConfig(vocab_size=MODEL.vocab_size, hidden_size=MODEL.hidden_size,
                       intermediate_size=MODEL.ffn_hidden_size, num_hidden_layers=MODEL.num_layers,
                       num_attention_heads=MODEL.num_heads, num_key_value_heads=MODEL.kv_groups,
                       head_dim=MODEL.head_dim, partial_rotary_factor=MODEL.rotary_fraction,
                       rms_norm_eps=MODEL.rms_norm_eps, attention_bias=True, tie_word_embeddings=False,
                       max_position_embeddings=T, pad_token_id=None, eos_token_id=None, bos_token_id=None)
    model = GlmForCausalLM(hf_cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    b = batch_arrays()
    ids = torch.from_numpy(np.concatenate([b["tokens"], b["targets"][:, -1:]], 1).astype(np.int64))

    def one():
        out = model(input_ids=ids[:, :-1], labels=ids[:, :-1])  # HF shifts labels itself
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(one, steps), model.config._attn_implementation


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="train_step_vs_hf.json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count())
    our_sec, flops = ours(a.steps)
    print(f"ours: {our_sec:.3f} s/step", flush=True)
    hf_sec, attn_impl = hf(a.steps)
    print(f"hf:   {hf_sec:.3f} s/step", flush=True)
    jax_peak, torch_peak = jax_matmul_flops(), torch_matmul_flops()
    r = {
        "model": {"vocab": MODEL.vocab_size, "hidden": MODEL.hidden_size, "ffn": MODEL.ffn_hidden_size,
                  "layers": MODEL.num_layers, "heads": MODEL.num_heads, "kv_heads": MODEL.kv_groups,
                  "head_dim": MODEL.head_dim, "batch": B, "seq": T, "dtype": "float32"},
        "cpu_cores": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__, "hf_attention": attn_impl,
        "flops_per_step": flops,
        "ours": {"step_seconds": our_sec, "tokens_per_sec": B * T / our_sec, "flops_per_sec": flops / our_sec,
                 "matmul_peak_flops": jax_peak, "fraction_of_matmul_peak": flops / our_sec / jax_peak},
        "hf": {"step_seconds": hf_sec, "tokens_per_sec": B * T / hf_sec, "flops_per_sec": flops / hf_sec,
               "matmul_peak_flops": torch_peak, "fraction_of_matmul_peak": flops / hf_sec / torch_peak},
    }
    r["ratio_ours_over_hf"] = r["ours"]["tokens_per_sec"] / r["hf"]["tokens_per_sec"]
    print(f"{'':10}{'step s':>10}{'tokens/s':>12}{'GFLOP/s':>10}{'matmul peak':>13}{'of peak':>9}")
    for name in ("ours", "hf"):
        x = r[name]
        print(f"{name:10}{x['step_seconds']:10.3f}{x['tokens_per_sec']:12.1f}{x['flops_per_sec'] / 1e9:10.1f}"
              f"{x['matmul_peak_flops'] / 1e9:13.1f}{100 * x['fraction_of_matmul_peak']:8.1f}%")
    print(f"ratio ours / hf: {r['ratio_ours_over_hf']:.2f}")
    with open(a.out, "w") as f:
        json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
