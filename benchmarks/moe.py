"""GLM-4.5 mixture of experts: the debug MoE's train step on CPU against a dense model of the same
active size, and the AOT table (GLM-4.5-Air and GLM-4.5 at 8K on v5p).

    python benchmarks/moe.py cpu [--steps=10] [--out=benchmarks/results/moe_cpu.json]
    python benchmarks/moe.py aot [--rows=glm4_5_air_8k:v5p-64,glm4_5_8k:v5p-256] [--memory-only]

cpu: configs/debug_moe.py (batch 8 x 256, fp32, one device) three ways: MoE with its MTP loss, MoE
without it (train.mtp_loss_weight=0: the MTP module is not run), and a dense model with the same
dims whose ffn makes its parameter count equal the MoE's active parameters per token (no MTP).
Prints step time and tokens/s of each; writes JSON.

aot: the rows of benchmarks/aot_plans.py's MoE plans (glm4_5_air_8k, glm4_5_8k: seq 8192, one row
per chip, experts over the config's expert axis, FSDP over the rest, MTP on), default every row; each compiles the
real train step with libtpu (`glm_jax.aot.plan`) and is merged into
benchmarks/results/aot_<plan>.json: per-device HBM and whether it fits, all-to-all bytes per step,
projected step time. A slice too small fails to compile (RESOURCE_EXHAUSTED): that row records
XLA's message instead, which is how "the smallest slice that holds it" is shown.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from glm_jax import config, sharding  # noqa: E402
from glm_jax.model import spec  # noqa: E402
from glm_jax.train import optimizer, state as state_lib, step as step_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOE_PLANS = ("glm4_5_air_8k", "glm4_5_8k")  # benchmarks/aot_plans.py's MoE plans


def dense_of_same_active_size(m: config.ModelConfig) -> config.ModelConfig:
    """A dense GLM with the MoE's dims and rotary whose ffn gives it the MoE's active parameters
    per token (MTP excluded), rounded to a multiple of 8."""
    target = spec.active_param_count(m, mtp=False)
    base = dataclasses.replace(m, name=f"{m.name}_dense", moe=config.MoEConfig(), mtp_layers=0, ffn_hidden_size=8)
    per_ffn = 3 * m.hidden_size * m.num_layers
    ffn = 8 + round((target - spec.param_count(base)) / per_ffn / 8) * 8
    return dataclasses.replace(base, ffn_hidden_size=ffn)


def batch(cfg):
    B, T, V = cfg.train.batch_size, cfg.train.seq_len, cfg.model.vocab_size
    tokens = np.random.default_rng(0).integers(0, V, (B, T + 1), dtype=np.int32)
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
            "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
            "segment_ids": np.ones((B, T), np.int32), "loss_mask": np.ones((B, T), np.float32)}


def time_train_step(cfg, steps: int) -> float:
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    tx = optimizer.make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        box = {"state": state_lib.init_state(cfg, mesh, tx)}
        fn = step_lib.make_train_step(cfg, mesh, tx=tx)
        b = sharding.global_batch(batch(cfg), mesh, cfg.train.batch_size)

        def one():
            box["state"], m = fn(box["state"], b)
            jax.block_until_ready(m["loss"])

        one()  # compile
        one()
        t = time.perf_counter()
        for _ in range(steps):
            one()
        return (time.perf_counter() - t) / steps


def cpu(a):
    cd = config.load_config_dict(os.path.join(REPO, "configs", "debug_moe.py"))
    moe = config.from_config_dict(config.apply_overrides(cd, ["mesh.fsdp=1"]))
    rows = {"moe_with_mtp": moe,
            "moe_without_mtp": dataclasses.replace(moe, train=dataclasses.replace(moe.train, mtp_loss_weight=0.0)),
            "dense_same_active": dataclasses.replace(moe, model=dense_of_same_active_size(moe.model))}
    tokens = moe.train.batch_size * moe.train.seq_len
    out = {"cpu_cores": os.cpu_count(), "jax": jax.__version__, "batch": moe.train.batch_size,
           "seq": moe.train.seq_len, "rows": {}}
    print(f"{'':20}{'params':>12}{'active':>12}{'step s':>9}{'tokens/s':>10}")
    for name, cfg in rows.items():
        sec = time_train_step(cfg, a.steps)
        r = {"params": spec.param_count(cfg.model), "active_params": spec.active_param_count(cfg.model, mtp=False),
             "ffn": cfg.model.ffn_hidden_size, "step_seconds": sec, "tokens_per_sec": tokens / sec}
        out["rows"][name] = r
        print(f"{name:20}{r['params']:12,}{r['active_params']:12,}{sec:9.3f}{r['tokens_per_sec']:10.0f}", flush=True)
    out["moe_over_dense_tokens_per_sec"] = (out["rows"]["moe_without_mtp"]["tokens_per_sec"]
                                            / out["rows"]["dense_same_active"]["tokens_per_sec"])
    print(f"MoE (no MTP) / dense of the same active size: {out['moe_over_dense_tokens_per_sec']:.2f}")
    return out


def aot(a):
    from benchmarks import aot_plans

    wanted = [r.split(":", 1) for r in a.rows.split(",") if r] or [
        (plan, row) for plan in MOE_PLANS for row in aot_plans.PLANS[plan][2]]
    docs = {}
    for plan, row in wanted:
        if plan not in MOE_PLANS or row not in aot_plans.PLANS[plan][2]:
            raise SystemExit(f"--rows: {plan}:{row} is not a MoE plan row; valid: "
                             + ",".join(f"{p}:{r}" for p in MOE_PLANS for r in aot_plans.PLANS[p][2]))
        docs[plan] = aot_plans.run_plan(plan, [row], costs=not a.memory_only)
    return {"plans": sorted(docs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["cpu", "aot"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", default="", help="aot: comma-separated plan:row (default: every MoE row)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--memory-only", action="store_true", help="aot: HBM and collectives only (no step time)")
    a = ap.parse_args()
    if a.what == "aot":  # aot_plans writes its own per-plan JSON, row by row
        aot(a)
        return
    result = cpu(a)
    result["args"] = vars(a)
    out = a.out or os.path.join(REPO, "benchmarks", "results", f"moe_{a.what}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
