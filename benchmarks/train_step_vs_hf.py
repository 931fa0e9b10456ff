"""Our jitted fp32 train step vs EasyDeL's Trainer step and transformers' GlmForCausalLM + torch
AdamW, same model, same CPU, one run.

    python benchmarks/train_step_vs_hf.py [--steps=3] [--out=benchmarks/results/train_step_vs_hf.json]
                                          [--skip-easydel]

Model: vocab 32768, hidden 768, ffn 2560, 12 layers, 12 heads, 2 kv heads, head dim 64, partial
rotary 0.5; batch 4 x 512 tokens; fp32; AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1, lr
1e-4) with global-norm clipping 1.0 in all three. Per framework: forward (the loss, no gradient
work), forward+backward (loss and gradients) and the whole step. Ours: jit of the loss, jit of
value_and_grad of it, the jitted train step. HF: forward under no_grad, loss.backward(), the step
with clip and AdamW. EasyDeL (0.3.0, pinned with its own jax in benchmarks/.venv-easydel, created
here with pip when missing): benchmarks/easydel_step.py in a subprocess, EasyDeL's own Trainer
step. Also times each framework's fp32 2048x2048 matmul to give the machine's peak as each
framework sees it. Prints one table and the ratios ours/easydel and ours/hf; writes JSON with the
CPU model, the load average and the date. On this project's shared machines other jobs may run
at the same time: the columns of one run share that load.
"""

import argparse
import datetime
import json
import os
import subprocess
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


HERE = os.path.dirname(os.path.abspath(__file__))
EASYDEL_VENV = os.path.join(HERE, ".venv-easydel")
EASYDEL_PINS = (["torch==2.13.0"], ["easydel==0.3.0", "pillow"])  # torch first: the CPU wheel, not CUDA
OPT = {"lr": 1e-4, "b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0}


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
                 train=TrainConfig(seq_len=T, batch_size=B, steps=10_000, warmup_steps=10, lr=OPT["lr"],
                                   adam_b1=OPT["b1"], adam_b2=OPT["b2"], adam_eps=OPT["eps"],
                                   weight_decay=OPT["weight_decay"], grad_clip=OPT["grad_clip"]))
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    tx = optimizer.make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        box = {"state": state_lib.init_state(cfg, mesh, tx)}
        fn = step_lib.make_train_step(cfg, mesh, tx=tx)
        batch = sharding.global_batch(batch_arrays(), mesh, B)
        loss = lambda params, batch: step_lib.loss_sums(params, batch, cfg)[0]  # what the step differentiates
        fwd, fwd_bwd = jax.jit(loss), jax.jit(jax.value_and_grad(loss))
        r = {"forward_seconds": _time(lambda: jax.block_until_ready(fwd(box["state"].params, batch)), steps),
             "fwd_bwd_seconds": _time(lambda: jax.block_until_ready(fwd_bwd(box["state"].params, batch)), steps)}

        def one():
            box["state"], m = fn(box["state"], batch)
            jax.block_until_ready(m["loss"])

        r["step_seconds"] = _time(one, steps)
        return r, metrics.train_flops_per_token(MODEL, T) * B * T


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
    opt = torch.optim.AdamW(model.parameters(), lr=OPT["lr"], betas=(OPT["b1"], OPT["b2"]), eps=OPT["eps"],
                            weight_decay=OPT["weight_decay"])
    b = batch_arrays()
    ids = torch.from_numpy(np.concatenate([b["tokens"], b["targets"][:, -1:]], 1).astype(np.int64))

    def loss():
        return model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss  # HF shifts labels itself

    def forward():
        with torch.no_grad():
            loss()

    def fwd_bwd():
        loss().backward()
        opt.zero_grad(set_to_none=True)

    def one():
        loss().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPT["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"forward_seconds": _time(forward, steps), "fwd_bwd_seconds": _time(fwd_bwd, steps),
            "step_seconds": _time(one, steps)}, model.config._attn_implementation


def _easydel_python() -> str:
    """The EasyDeL venv's python, created with pip (pinned versions) when missing."""
    py = os.path.join(EASYDEL_VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"creating {EASYDEL_VENV} (pip install {' then '.join(' '.join(p) for p in EASYDEL_PINS)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", EASYDEL_VENV], check=True, capture_output=True, text=True)
    pip = subprocess.run([py, "-m", "pip", "show", "easydel"], capture_output=True, text=True)
    if pip.returncode != 0:
        for pins in EASYDEL_PINS:
            p = subprocess.run([py, "-m", "pip", "install", "-q", *pins], capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"pip install {' '.join(pins)} into {EASYDEL_VENV} failed: {p.stderr.strip()[-600:]}")
    return py


def easydel(steps) -> dict:
    """EasyDeL's Trainer step timings (benchmarks/easydel_step.py in its venv), or {"error": why}."""
    try:
        py = _easydel_python()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        return {"error": f"EasyDeL could not be installed: {e}"}
    arg = {"vocab": MODEL.vocab_size, "hidden": MODEL.hidden_size, "ffn": MODEL.ffn_hidden_size,
           "layers": MODEL.num_layers, "heads": MODEL.num_heads, "kv_heads": MODEL.kv_groups,
           "head_dim": MODEL.head_dim, "rotary_fraction": MODEL.rotary_fraction, "rms_norm_eps": MODEL.rms_norm_eps,
           "seq": T, "batch": B, "steps": steps, "workdir": os.path.join("/tmp", f"easydel_bench_{os.getpid()}"), **OPT}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env.update(EASYDEL_AUTO="0", JAX_PLATFORMS="cpu")
    p = subprocess.run([py, os.path.join(HERE, "easydel_step.py"), json.dumps(arg)], capture_output=True, text=True,
                       env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"EasyDeL step failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-800:]}"}
    return json.loads(lines[-1])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def _row(t: dict, flops: float, peak: float) -> dict:
    return {**t, "tokens_per_sec": B * T / t["step_seconds"], "flops_per_sec": flops / t["step_seconds"],
            "matmul_peak_flops": peak, "fraction_of_matmul_peak": flops / t["step_seconds"] / peak}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "train_step_vs_hf.json"))
    ap.add_argument("--skip-easydel", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count())
    load = {"start": os.getloadavg()}
    our_t, flops = ours(a.steps)
    print(f"ours: {our_t}", flush=True)
    ed_t = {"error": "skipped (--skip-easydel)"} if a.skip_easydel else easydel(a.steps)
    print(f"easydel: {ed_t}", flush=True)
    hf_t, attn_impl = hf(a.steps)
    print(f"hf:   {hf_t}", flush=True)
    jax_peak, torch_peak = jax_matmul_flops(), torch_matmul_flops()
    load["end"] = os.getloadavg()
    r = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(), "load_average_1_5_15": load,
        "model": {"vocab": MODEL.vocab_size, "hidden": MODEL.hidden_size, "ffn": MODEL.ffn_hidden_size,
                  "layers": MODEL.num_layers, "heads": MODEL.num_heads, "kv_heads": MODEL.kv_groups,
                  "head_dim": MODEL.head_dim, "batch": B, "seq": T, "dtype": "float32"},
        "optimizer": OPT, "steps_timed": a.steps,
        "jax": jax.__version__, "torch": torch.__version__, "hf_attention": attn_impl,
        "flops_per_step": flops,
        "ours": _row(our_t, flops, jax_peak),
        "hf": _row(hf_t, flops, torch_peak),
    }
    if "error" in ed_t:
        r["easydel"] = ed_t
    else:  # EasyDeL's peak: its jax (0.9.2) on the same CPU is not ours; our jax's matmul peak is the reference
        r["easydel"] = _row(ed_t, flops, jax_peak)
    r["ratio_ours_over_hf"] = r["ours"]["tokens_per_sec"] / r["hf"]["tokens_per_sec"]
    if "error" not in ed_t:
        r["ratio_ours_over_easydel"] = r["ours"]["tokens_per_sec"] / r["easydel"]["tokens_per_sec"]
    print(f"{'':9}{'forward s':>10}{'fwd+bwd s':>10}{'step s':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'matmul peak':>12}"
          f"{'of peak':>8}")
    for name in ("ours", "easydel", "hf"):
        x = r[name]
        if "error" in x:
            print(f"{name:9}{x['error']}")
            continue
        print(f"{name:9}{x['forward_seconds']:10.2f}{x['fwd_bwd_seconds']:10.2f}{x['step_seconds']:9.2f}"
              f"{x['tokens_per_sec']:10.1f}{x['flops_per_sec'] / 1e9:9.1f}{x['matmul_peak_flops'] / 1e9:12.1f}"
              f"{100 * x['fraction_of_matmul_peak']:7.1f}%")
    if "ratio_ours_over_easydel" in r:
        print(f"ratio ours / easydel (tokens/s): {r['ratio_ours_over_easydel']:.2f}")
    print(f"ratio ours / hf (tokens/s): {r['ratio_ours_over_hf']:.2f}")
    print(f"{r['cpu_model']}, {r['cpu_cores']} cores, load average {load['start']} -> {load['end']}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
