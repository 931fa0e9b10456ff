"""Post-training cost on this machine: the debug plan's stages, and a DPO step against an SFT step.

    JAX_PLATFORMS=cpu python benchmarks/post_train.py [--sft_steps=10] [--dpo_steps=10] [--steps=5]
        [--out=benchmarks/results/post_train.json]

Measures, with configs/post_train.py:model=debug (the debug model, bundled data, T = 512, 8 rows):
  plan    `loop.run` of the plan with its stages shortened to --sft_steps / --dpo_steps: wall time of
          each stage (start-up, compile, steps, checkpoints), its step time without the first step
          (the compile), and the full plan's projected wall time at the plan's own step counts
  steps   on one batch of bundled preference pairs (the same [B, T] tokens for each), median of
          --steps calls after a compile:
            sft        the SFT (train.objective=lm) step: cross-entropy on the response tokens
            dpo        the DPO step: policy forward + backward, and the frozen reference's forward
            reference  the reference's forward alone (what precomputing the reference log-probs
                       would cost, once per pair per epoch)
          and dpo / sft: the reference forward and DPO's per-segment bookkeeping are the extra cost
  memory  bytes of the train state (fp32 params + AdamW moments) and of the frozen reference
          (fp32 params), for the debug model and GLM-4-9B
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PLAN = os.path.join(REPO, "configs", "post_train.py") + ":model=debug"


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)


def measure_plan(workdir: str, sft_steps: int, dpo_steps: int) -> dict:
    from glm_jax import config
    from glm_jax.data import loader
    from glm_jax.train import loop, metrics

    cd = config.load_config_dict(PLAN)
    full = {name: cfg.train.steps for name, cfg in config.resolve_stages(cd)}
    cd = config.apply_overrides(cd, [f"stages.sft.train.steps={sft_steps}", f"stages.dpo.train.steps={dpo_steps}",
                                     "mesh.fsdp=-1", "train.log_every=5"])
    log = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        loop.run(cd, workdir, make_iterator=loader.make_iterator, prepare_data=loader.build_caches)
    wall = {m.group(1): float(m.group(2)) for m in re.finditer(r"\[(\w+)\] done at step \d+ \(([\d.]+) s\)", log.getvalue())}
    rows = metrics.read_rows(workdir)
    out = {}
    for name, steps in (("sft", sft_steps), ("dpo", dpo_steps)):
        times = [r["step_time"] for r in rows if r["stage"] == name][1:]  # the first step is the compile
        step = statistics.median(times) if times else float("nan")
        out[name] = {"steps": steps, "wall_s": wall[name], "step_s": step, "plan_steps": full[name],
                     "plan_projected_s": wall[name] + (full[name] - steps) * step}
    return out


def _time(fn, *args, steps: int) -> float:
    import jax

    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_steps(cache_dir: str, steps: int) -> dict:
    import jax

    from glm_jax import config, sharding
    from glm_jax.data import loader
    from glm_jax.train import dpo, optimizer, state as state_lib
    from glm_jax.train.step import make_train_step

    stages = dict(config.resolve_stages(config.apply_overrides(config.load_config_dict(PLAN), ["mesh.fsdp=-1"])))
    dpo_cfg = stages["dpo"]
    dpo_cfg = dataclasses.replace(dpo_cfg, data=dataclasses.replace(dpo_cfg.data, cache_dir=cache_dir))
    sft_cfg = dataclasses.replace(dpo_cfg, train=dataclasses.replace(dpo_cfg.train, objective="lm"))
    B = dpo_cfg.train.batch_size
    local = next(loader.make_iterator(dpo_cfg, rows=list(range(B))))
    mesh = sharding.make_mesh(dpo_cfg.mesh)
    tx = optimizer.make_optimizer(dpo_cfg.train)
    with jax.set_mesh(mesh):
        batch = sharding.global_batch(local, mesh, B)
        state = state_lib.init_state(dpo_cfg, mesh, tx)
        ref = jax.jit(lambda p: jax.tree.map(lambda x: x * 1.0, p), out_shardings=state_lib.param_shardings(dpo_cfg, mesh))(
            state.params)
        # The steps donate their state: time each on its own copy, carried through the calls.
        holder = {"sft": state, "dpo": jax.tree.map(lambda x: x.copy(), state)}
        sft_step, dpo_step = make_train_step(sft_cfg, mesh, tx=tx), make_train_step(dpo_cfg, mesh, tx=tx)

        def run_sft():
            holder["sft"], m = sft_step(holder["sft"], batch)
            return m

        def run_dpo():
            holder["dpo"], m = dpo_step(holder["dpo"], batch, ref)
            return m

        reference = jax.jit(lambda r, b: dpo.reference_logprobs(r, b, dpo_cfg))
        out = {"rows": B, "seq_len": dpo_cfg.train.seq_len, "tokens": int(B * dpo_cfg.train.seq_len),
               "response_tokens": int(local["loss_mask"].sum()), "pairs": int(sum(
                   len(set(s[s > 0].tolist())) // 2 for s in local["segment_ids"])),
               "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
               "sft_s": _time(run_sft, steps=steps), "dpo_s": _time(run_dpo, steps=steps),
               "reference_s": _time(reference, ref, batch, steps=steps)}
    out["dpo_over_sft"] = out["dpo_s"] / out["sft_s"]
    out["reference_over_sft"] = out["reference_s"] / out["sft_s"]
    return out


def measure_memory() -> dict:
    from glm_jax import config
    from glm_jax.model import spec

    out = {}
    for name in ("debug", "glm4_9b"):
        n = spec.param_count(config.load(os.path.join(REPO, "configs", f"{name}.py")).model)
        out[name] = {"params": n, "state_bytes": 12 * n, "reference_bytes": 4 * n, "reference_over_state": 1 / 3}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft_steps", type=int, default=10)
    ap.add_argument("--dpo_steps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "post_train.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = os.path.join(tmp, "cache")
        os.environ["GLM_JAX_DATA_CACHE"] = cache_dir
        plan = measure_plan(os.path.join(tmp, "run"), args.sft_steps, args.dpo_steps)
        steps = measure_steps(cache_dir, args.steps)
    memory = measure_memory()
    print("\nstage  steps  wall s  step s  plan steps  plan projected s")
    for name, r in plan.items():
        print(f"{name:5}  {r['steps']:5d}  {r['wall_s']:6.1f}  {r['step_s']:6.3f}  {r['plan_steps']:10d}  "
              f"{r['plan_projected_s']:16.0f}")
    print(f"\none batch: {steps['rows']} rows x {steps['seq_len']} = {steps['tokens']} tokens, {steps['pairs']} pairs, "
          f"{steps['response_tokens']} response tokens, {steps['devices']} x {steps['device_kind']}")
    print("step             s    / sft")
    for k in ("sft", "dpo", "reference"):
        print(f"{k:10}  {steps[k + '_s']:7.3f}  {steps[k + '_s'] / steps['sft_s']:5.2f}")
    print("\nmodel     params          state GB  reference GB")
    for name, r in memory.items():
        print(f"{name:8}  {r['params']:>14,}  {r['state_bytes'] / 1e9:8.2f}  {r['reference_bytes'] / 1e9:12.2f}")
    result = {"plan": plan, "steps": steps, "memory": memory, "args": vars(args)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
