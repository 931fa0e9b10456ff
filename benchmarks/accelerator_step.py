"""Train-step tokens/s and MFU on whatever accelerator JAX sees (GPU, TPU; CPU with --quick).

    python benchmarks/accelerator_step.py [--models=debug,138m,glm4_9b_2l] [--attention=dot_product] \\
        [--dtype=bfloat16] [--steps=10] [--quick] [--out=benchmarks/results/accelerator_step_<platform>.json]

Models: `debug` (configs/debug.py), `138m` (the model of benchmarks/train_step_vs_hf.py: vocab
32768, hidden 768, 12 layers, 12:2 heads of 64, ffn 2560; 137.7M params) and `glm4_9b_2l`
(configs/glm4_9b.py cut to 2 layers: GLM-4-9B's widths and 151,552 vocab, remat full). Each
runs the real train step (AdamW, clipping, tiled loss, fp32 master weights, `--dtype` compute)
on a mesh of all devices (FSDP), one packed document per row. Reported per model: step time
(mean of `--steps` after 2 warm-up steps, each step waited for), tokens/s, model FLOPs per step
(glm_jax.train.metrics.train_flops_per_token) and MFU against two peaks: the device kind's
published dense bf16 peak where we know it, and the measured peak of a large matmul in
`--dtype` on this device. A model that does not fit prints why and the others still run.
`--quick` shrinks batch, sequence and steps and skips glm4_9b_2l so that it finishes on a CPU
in a few minutes (numbers then only show that the script works).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from glm_jax import accelerators, config, sharding  # noqa: E402
from glm_jax.train import metrics, optimizer, state as state_lib, step as step_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_138M = dict(name="138m", vocab_size=32768, hidden_size=768, num_layers=12, num_heads=12, kv_groups=2,
                  head_dim=64, ffn_hidden_size=2560, rms_norm_eps=1e-5, max_seq_len=8192)


def model_config(name: str, overrides: list[str]) -> config.Config:
    """The Config of one benchmark model (train/mesh fields from `overrides`)."""
    if name == "debug":
        return config.load(os.path.join(REPO, "configs", "debug.py"), overrides)
    if name == "glm4_9b_2l":
        return config.load(os.path.join(REPO, "configs", "glm4_9b.py"), ["model.num_layers=2", *overrides])
    if name == "138m":
        cd = config.default_config_dict()
        cd.model.update(MODEL_138M)
        return config.from_config_dict(config.apply_overrides(cd, overrides))
    raise SystemExit(f"--models: unknown model {name!r}; valid: debug, 138m, glm4_9b_2l")


def matmul_peak(dtype: str, n: int, reps: int = 10) -> float:
    """Measured FLOP/s of an n x n matmul in `dtype` on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def batch(cfg: config.Config, mesh) -> dict:
    B, T = cfg.train.batch_size, cfg.train.seq_len
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.model.vocab_size, size=(B, T + 1), dtype=np.int32)
    rows = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
            "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
            "segment_ids": np.ones((B, T), np.int32), "loss_mask": np.ones((B, T), np.float32)}
    return sharding.global_batch(rows, mesh, B)


def run_model(cfg: config.Config, steps: int) -> dict:
    mesh = sharding.make_mesh(cfg.mesh)
    tx = optimizer.make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        st = state_lib.init_state(cfg, mesh, tx)
        fn = step_lib.make_train_step(cfg, mesh, tx=tx)
        b = batch(cfg, mesh)
        t0 = time.perf_counter()
        st, m = fn(st, b)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        st, m = fn(st, b)
        jax.block_until_ready(m)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            st, m = fn(st, b)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
    sec = float(np.mean(times))
    tokens = cfg.train.batch_size * cfg.train.seq_len
    return {"step_seconds": sec, "step_seconds_all": times, "first_step_seconds": compile_s,
            "tokens_per_second": tokens / sec, "loss": float(m["loss"]),
            "model_flops_per_step": metrics.train_flops_per_token(cfg.model, cfg.train.seq_len) * tokens}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="default debug,138m,glm4_9b_2l (--quick: debug,138m)")
    ap.add_argument("--attention", default="dot_product", help="run.attention for every model")
    ap.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq_len", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny batch/sequence/steps: a CPU check of the script")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    platform = jax.default_backend()
    device = jax.devices()[0]
    dtype = a.dtype or ("float32" if platform == "cpu" else "bfloat16")
    steps = a.steps or (2 if a.quick else 10)
    chip = accelerators.lookup(device.device_kind)
    peak_known = chip.peak_tflops / chip.devices_per_chip if chip else None
    peak_known = peak_known * 1e12 if peak_known else None
    peak_measured = matmul_peak(dtype, 1024 if a.quick else 8192)
    print(f"{jax.device_count()} x {device.device_kind} ({platform}), compute {dtype}, attention {a.attention}; "
          f"measured {dtype} matmul peak {peak_measured / 1e12:.2f} TFLOP/s per device"
          + (f", published {peak_known / 1e12:.0f}" if peak_known else ""), flush=True)
    rows = []
    for name in (a.models or ("debug,138m" if a.quick else "debug,138m,glm4_9b_2l")).split(","):
        default_bt = {"debug": (8, 256), "138m": (8, 2048), "glm4_9b_2l": (jax.device_count(), 8192)}[name]
        if a.quick:
            default_bt = (max(2, jax.device_count()), 128)
        B, T = a.batch or default_bt[0], a.seq_len or default_bt[1]
        overrides = [f"train.batch_size={B}", f"train.seq_len={T}", "train.grad_accum=1", "mesh.data=1",
                     "mesh.fsdp=-1", "mesh.sequence=1", "mesh.tensor=1", f"run.dtype='{dtype}'",
                     f"run.attention='{a.attention}'", f"model.max_seq_len={max(T, 512)}"]
        cfg = model_config(name, overrides)
        row = {"model": name, "params": int(sum(np.prod(s.shape) for s in jax.tree.leaves(
            state_lib.abstract_state(cfg, optimizer.make_optimizer(cfg.train)).params))),
               "batch": B, "seq_len": T, "dtype": dtype, "attention": a.attention, "remat": cfg.run.remat}
        try:
            row.update(run_model(cfg, steps))
        except Exception as e:  # noqa: BLE001 - out of memory / no kernel here is the answer for this row
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"{name}: {row['error']}", flush=True)
            rows.append(row)
            continue
        per_dev = row["model_flops_per_step"] / row["step_seconds"] / jax.device_count()
        row["mfu_published_peak"] = per_dev / peak_known if peak_known else None
        row["mfu_measured_peak"] = per_dev / peak_measured
        rows.append(row)
    print(f"\n{'model':12} {'params':>8} {'batch x seq':>12} {'step ms':>9} {'tokens/s':>10} "
          f"{'MFU (published)':>16} {'MFU (measured mm)':>18}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:12} {r['params'] / 1e6:7.1f}M {r['batch']:>5} x {r['seq_len']:<5} {r['error'][:70]}")
            continue
        pub = "n/a" if r["mfu_published_peak"] is None else f"{100 * r['mfu_published_peak']:.1f}%"
        print(f"{r['model']:12} {r['params'] / 1e6:7.1f}M {r['batch']:>5} x {r['seq_len']:<5} "
              f"{1e3 * r['step_seconds']:9.1f} {r['tokens_per_second']:10,.0f} {pub:>16} "
              f"{100 * r['mfu_measured_peak']:17.1f}%")
    out = a.out or os.path.join(REPO, "benchmarks", "results", f"accelerator_step_{platform}{'_quick' if a.quick else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"device_kind": device.device_kind, "platform": platform, "devices": jax.device_count(),
                   "jax": jax.__version__, "peak_published": peak_known, "peak_measured_matmul": peak_measured,
                   "steps": steps, "quick": a.quick, "rows": rows}, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
