"""Released GLM-4 shapes planned for TPU slices without a TPU: per-device HBM of the real train
step, whether it fits, XLA-counted and model FLOPs, projected step time and both MFUs, collectives.

    python benchmarks/aot_plans.py --plan=glm4_9b_8k [--rows=v6e-256,v5p-128] [--list] [--memory-only]

Every row compiles the real step with libtpu on this CPU host (`glm_jax.aot.plan`; 5-20 min a row
for 9B/32B shapes), prints `glm_jax.aot`'s report, and is merged into
`benchmarks/results/aot_<plan>.json` by row name, so rows can be (re)run one at a time. A row that
does not compile records XLA's message instead (RESOURCE_EXHAUSTED means it does not fit: that is
a result); the summary table at the end covers every row in the file.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from glm_jax import aot, config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP_ALL = ["mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1"]
_9B_8K = ["train.seq_len=8192", "train.batch_size=256", "run.remat='full'", *FSDP_ALL]
WHOLE_LOGITS = ["train.loss_chunk=8192"]  # one chunk = the [B, T, V] logits the untiled loss made
MOE_8K = ["train.seq_len=8192", "mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1"]  # mesh.expert: the config's
LONG = ["mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1", "run.remat='full'", "run.attention='flash'",
        "run.attention_block_q=512", "run.attention_block_kv=512", "train.batch_size=16"]

# plan: (config file, what it answers, {row: (topology, overrides)})
PLANS = {
    "glm4_9b_8k": ("glm4_9b.py", "GLM-4-9B, seq 8192, batch 256 (one row per device on 256 chips), bf16 "
                   "compute, full remat, FSDP over every chip: HBM per device with the vocab-tiled loss "
                   "(train.loss_chunk=512) and with the whole-logits loss (one chunk of 8192).", {
        "v5e-256": ("v5e:16x16", _9B_8K),
        "v5e-256-whole-logits": ("v5e:16x16", _9B_8K + WHOLE_LOGITS),
        "v6e-256": ("v6e:16x16", _9B_8K),
        "v6e-256-whole-logits": ("v6e:16x16", _9B_8K + WHOLE_LOGITS),
        "v5p-128": ("v5p:4x4x4", _9B_8K),
        "v5p-128-whole-logits": ("v5p:4x4x4", _9B_8K + WHOLE_LOGITS),
    }),
    "glm4_32b_0414_8k": ("glm4_32b_0414.py", "GLM-4-32B-0414, seq 8192, batch 256, FSDP over every chip: "
                         "the smallest v5p slice that holds the real train step.", {
        "v5p-64": ("v5p:2x4x4", ["train.seq_len=8192", "train.batch_size=256", *FSDP_ALL]),
        "v5p-128": ("v5p:4x4x4", ["train.seq_len=8192", "train.batch_size=256", *FSDP_ALL]),
    }),
    "glm4_5_air_8k": ("glm4_5_air.py", "GLM-4.5-Air (106B total, 12B active), seq 8192, one row per chip, "
                      "experts over expert=16, FSDP over the rest, MTP on, tokens dispatched 1,024 at a time: "
                      "the smallest v5p slice that holds the real train step.", {
        "v5p-32": ("v5p:2x2x4", ["train.batch_size=16", *MOE_8K]),
        "v5p-64": ("v5p:2x4x4", ["train.batch_size=32", *MOE_8K]),
        "v5p-64-megablox": ("v5p:2x4x4", ["train.batch_size=32", *MOE_8K, "run.moe_matmul='megablox'"]),
        "v5p-128": ("v5p:4x4x4", ["train.batch_size=64", *MOE_8K]),
        "v5p-128-one-round": ("v5p:4x4x4", ["train.batch_size=64", *MOE_8K, "run.moe_dispatch_tokens=0"]),
    }),
    "glm4_5_8k": ("glm4_5.py", "GLM-4.5 (355B total, 32B active), seq 8192, one row per chip, experts over "
                  "expert=32, FSDP over the rest, MTP on, tokens dispatched 1,024 at a time: the smallest v5p "
                  "slice that holds the real train step.", {
        "v5p-128": ("v5p:4x4x4", ["train.batch_size=64", *MOE_8K]),
        "v5p-256": ("v5p:4x4x8", ["train.batch_size=128", *MOE_8K]),
        "v5p-512": ("v5p:4x8x8", ["train.batch_size=256", *MOE_8K]),
    }),
    "long_context": ("glm4_9b_chat_1m.py", "GLM-4-9B-chat-1M shapes at 128K and 1M tokens per row: flash "
                     "attention, context parallelism over the sequence axis, FSDP over the rest.", {
        "128k": ("v5p:4x4x8", ["train.seq_len=131072", "mesh.sequence=8", *LONG]),
        "1m": ("v5p:8x8x16", ["train.seq_len=1048576", "mesh.sequence=64", *LONG]),
    }),
}


def _commit() -> str:
    out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run_row(config_file: str, topology: str, overrides: list[str], costs: bool = True) -> dict:
    """One compiled plan (costs=False: memory and collectives only), or the compile error that says
    why there is none."""
    cd = config.load_config_dict(os.path.join(REPO, "configs", config_file))
    cfg = config.from_config_dict(config.apply_overrides(cd, overrides))
    t0 = time.perf_counter()
    try:
        return {**aot.plan(cfg, topology, costs=costs), "error": None}
    except Exception as e:  # noqa: BLE001 - libtpu's compile errors are bare runtime errors; they are the result
        text = str(e)
        fits = False if "RESOURCE_EXHAUSTED" in text else None
        message = text.split("RESOURCE_EXHAUSTED:", 1)[-1].strip().splitlines()[0][:600]
        return {"topology": topology, "fits": fits, "error": f"{type(e).__name__}: {message}",
                "compile_seconds": time.perf_counter() - t0}


def _gib(x) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def summary(rows: dict) -> str:
    head = (f"{'row':24} {'topology':11} {'HBM/dev GiB':>11} {'cap GiB':>7} {'fits':>5} {'step s':>8} "
            f"{'MFU xla':>7} {'MFU model':>9} {'coll GiB/dev':>12} {'a2a GiB/dev':>11}")
    lines = [head]
    for name, r in rows.items():
        if r.get("error"):
            lines.append(f"{name:24} {r['topology']:11} {'':>11} {'':>7} {str(r['fits']):>5}  {r['error'][:70]}")
            continue
        h = r["hbm_per_device"]
        coll = sum(c["bytes"] for c in r["collectives"].values()) if "collectives" in r else None
        step = r.get("projected_step_seconds")  # rows carried over from older planners may lack fields
        lines.append(f"{name:24} {r['topology']:11} {_gib(h['total']):>11} {_gib(h.get('capacity')):>7} "
                     f"{str(r['fits']):>5} {'-' if step is None else f'{step:.2f}':>8} "
                     f"{aot._pct(r.get('projected_mfu_xla')):>7} {aot._pct(r.get('projected_mfu_model')):>9} "
                     f"{_gib(coll):>12} {_gib(r.get('all_to_all_bytes_per_device')):>11}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", choices=sorted(PLANS), required=True)
    ap.add_argument("--rows", default="", help="comma-separated row names (default: every row of the plan)")
    ap.add_argument("--list", action="store_true", help="print the plan's rows and commands, compile nothing")
    ap.add_argument("--out", default="", help="default benchmarks/results/aot_<plan>.json")
    ap.add_argument("--memory-only", action="store_true", help="HBM and collectives only (no FLOPs, step time)")
    a = ap.parse_args()
    config_file, what, plan_rows = PLANS[a.plan]
    names = [n for n in a.rows.split(",") if n] or list(plan_rows)
    unknown = sorted(set(names) - set(plan_rows))
    if unknown:
        ap.error(f"--rows: {unknown} not in plan {a.plan!r}; valid: {sorted(plan_rows)}")
    if a.list:
        for n in names:
            topology, overrides = plan_rows[n]
            print(f"{n}: python -m glm_jax.aot --config=configs/{config_file} --topology={topology} "
                  + " ".join(f"--config.{o}" for o in overrides))
        return
    run_plan(a.plan, names, a.out, costs=not a.memory_only)


def _saved_rows(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("rows", {})


def run_plan(plan: str, names: list[str], out: str = "", costs: bool = True) -> dict:
    """Compiles the named rows of `plan` (costs=False: the real step only, see glm_jax.aot), merging
    each into its JSON (default benchmarks/results/aot_<plan>.json) as it finishes; prints the
    summary; returns the document."""
    config_file, what, plan_rows = PLANS[plan]
    out = out or os.path.join(REPO, "benchmarks", "results", f"aot_{plan}.json")
    doc = {"plan": plan, "config": config_file, "what": what, "rows": _saved_rows(out)}
    for n in names:
        topology, overrides = plan_rows[n]
        row = run_row(config_file, topology, overrides, costs)
        row.update(overrides=overrides, commit=_commit(), measured=time.strftime("%Y-%m-%d"))
        print(f"== {n}" + ("" if row["error"] else "\n" + aot.format_report(row)), flush=True)
        print(f"{n}: {'compile failed: ' + row['error'] if row['error'] else 'compiled'} "
              f"in {row['compile_seconds']:.0f} s", flush=True)
        doc["rows"] = {**_saved_rows(out), n: row}  # rows another run wrote meanwhile are kept
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:  # after every row: a 20-minute compile is never lost to a later one
            json.dump(doc, f, indent=2, default=str)
    print(summary({n: doc["rows"][n] for n in plan_rows if n in doc["rows"]}))
    print(f"wrote {out}")
    return doc

if __name__ == "__main__":
    main()
