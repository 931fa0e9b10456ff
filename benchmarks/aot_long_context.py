"""GLM-4-9B-chat-1M shapes at 128K and 1M tokens per row with context parallelism, planned for
v5p topologies without a TPU: does the real train step fit in HBM, projected step time and MFU,
collective bytes.

    python benchmarks/aot_long_context.py [--runs=128k,1m] [--out=benchmarks/results/aot_long_context.json]

Each run compiles the real train step (flash attention, full remat, sequence axis for context
parallelism, fsdp over the rest) with libtpu via glm_jax.aot.plan. Prints one table per run and a
summary; writes JSON. A run that fails to compile is reported with its error (that is a result).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from glm_jax import aot, config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (topology, seq_len, batch, sequence axis)
RUNS = {
    "128k": ("v5p:4x4x8", 131072, 16, 8),
    "1m": ("v5p:8x8x16", 1048576, 16, 64),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="128k,1m")
    ap.add_argument("--out", default="benchmarks/results/aot_long_context.json")
    a = ap.parse_args()
    rows = []
    for name in a.runs.split(","):
        topology, seq, batch, seq_axis = RUNS[name]
        cd = config.load_config_dict(os.path.join(REPO, "configs", "glm4_9b_chat_1m.py"))
        cfg = config.from_config_dict(config.apply_overrides(cd, [
            f"train.seq_len={seq}", f"train.batch_size={batch}", "mesh.data=1", "mesh.fsdp=-1",
            f"mesh.sequence={seq_axis}", "mesh.tensor=1", "model.remat='full'", "model.attention='flash'",
            "model.attention_block_q=512", "model.attention_block_kv=512"]))
        t0 = time.perf_counter()
        try:
            report = aot.plan(cfg, topology)
            print(aot.format_report(report), flush=True)
            rows.append({"run": name, **report})
        except Exception as e:  # noqa: BLE001 - a topology/shape that doesn't compile is the answer
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:500]}"
            print(f"{name} on {topology}: did not compile after {time.perf_counter() - t0:.0f} s: {msg}", flush=True)
            rows.append({"run": name, "topology": topology, "seq_len": seq, "error": msg,
                         "seconds": time.perf_counter() - t0})
    print(f"\n{'run':6} {'topology':12} {'seq':>9} {'HBM/dev GiB':>12} {'fits':>5} {'step s':>8} {'MFU xla':>7} "
          f"{'MFU model':>9} {'coll GiB/dev':>12}")
    for r in rows:
        if "error" in r:
            print(f"{r['run']:6} {r['topology']:12} {r['seq_len']:>9} {'compile failed: ' + r['error'][:60]}")
            continue
        coll = sum(c["bytes"] for c in r["collectives"].values()) / 2**30
        print(f"{r['run']:6} {r['topology']:12} {r['seq_len']:>9} {r['hbm_per_device']['total'] / 2**30:12.2f} "
              f"{str(r['fits']):>5} {r['projected_step_seconds']:8.2f} {aot._pct(r['projected_mfu_xla']):>7} "
              f"{aot._pct(r['projected_mfu_model']):>9} {coll:12.2f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=2, default=str)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
