"""Attention backends compared by XLA's own numbers, on a TPU topology, without a TPU.

    python -m benchmarks.attention                                   # 8K/32K/128K, one v5p chip
    python -m benchmarks.attention --seqs=8192 --long=131072,1048576 --json=/tmp/attn.json

For each sequence length and backend (reference = plain XLA, flash = ours, splash = JAX's), the
fwd+bwd of causal packed attention with GLM-4-9B's head shapes (32 query heads, 2 kv heads, head
dim 128, bf16, batch 1) is compiled for one chip of the topology, and the table shows XLA's
cost-model flops and bytes, its projected time (`optimal_seconds`), a roofline time from the
model flops, and the peak memory from `memory_analysis()` (arguments + outputs + temporaries).
XLA's cost model sees inside a Pallas kernel only through the kernel's `CostEstimate`: ours
declares one, splash does not (its flops/bytes/time show only the XLA glue around it).

`--long` compiles the two kernels at long per-shard lengths with the per-shard heads of
GLM-4-9B-chat-1M on tensor=8 (4 query heads, 1 kv head): what context parallelism can use.
When a GPU is visible, the reference is also timed on it (Pallas TPU kernels do not run on GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from glm_jax import accelerators  # noqa: E402
from glm_jax.kernels.flash_attention import flash_attention  # noqa: E402
from glm_jax.kernels.splash import splash_attention  # noqa: E402
from glm_jax.model.attention import reference_attention  # noqa: E402

# Per-chip peaks (bf16 flop/s, HBM bytes/s, HBM bytes) from Cloud TPU's published specs.
BACKENDS = {
    "reference": lambda q, k, v, s, b: reference_attention(q, k, v, s),
    "flash": lambda q, k, v, s, b: flash_attention(q, k, v, s, block_q=b, block_kv=b),
    "splash": lambda q, k, v, s, b: splash_attention(q, k, v, s, block_q=b, block_kv=b),
}


def fwd_bwd(backend: str, block: int):
    """(q, k, v, segment_ids, dout) -> (out, dq, dk, dv): one training use of attention."""
    def f(q, k, v, seg, do):
        out, vjp = jax.vjp(lambda q, k, v: BACKENDS[backend](q, k, v, seg, block), q, k, v)
        return (out, *vjp(do))
    return jax.jit(f)


def model_flops(T: int, H: int, E: int) -> float:
    """Causal attention fwd (QK^T and PV: 2 x 2 T^2/2 H E) + bwd (twice the fwd)."""
    return 3 * 2 * T * T * H * E


def measure(backend, device, B, T, H, K, E, block):
    sh = jax.sharding.SingleDeviceSharding(device)
    q = jax.ShapeDtypeStruct((B, T, H, E), jnp.bfloat16, sharding=sh)
    kv = jax.ShapeDtypeStruct((B, T, K, E), jnp.bfloat16, sharding=sh)
    seg = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=sh)
    row = {"backend": backend, "T": T, "H": H, "K": K, "E": E, "block": block}
    t0 = time.perf_counter()
    try:
        lowered = fwd_bwd(backend, block).lower(q, kv, kv, seg, q)
        row["lower_s"] = round(time.perf_counter() - t0, 2)
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - a failed compile is a result (e.g. out of HBM)
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        need = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(e))
        if need:  # XLA says how much it would need: still a memory data point
            row["temp_bytes"] = int(float(need.group(1)) * 2 ** (10 * "KMGT".index(need.group(2)) + 10))
            row["fits_hbm"] = False
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    cost, mem = compiled.cost_analysis(), compiled.memory_analysis()
    chip = accelerators.lookup(device.device_kind) or accelerators.lookup("TPU v5p")
    peak_flops, hbm = chip.peak_flops_per_device, chip.hbm_bytes // chip.devices_per_chip
    flops = model_flops(T, H, E) * B
    row.update(
        xla_flops=float(cost.get("flops", 0.0)), xla_bytes=float(cost.get("bytes accessed", 0.0)),
        xla_seconds=float(cost.get("optimal_seconds", float("nan"))), model_flops=flops,
        roofline_seconds=flops / peak_flops,
        peak_bytes=int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                       - mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes), fits_hbm=bool(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                                              + mem.output_size_in_bytes <= hbm))
    return row


def time_on_gpu(B, T, H, K, E, repeats=5):
    """Wall time of the reference fwd+bwd on the first GPU, or None without one."""
    gpus = [d for d in jax.devices() if d.platform == "gpu"] if jax.default_backend() == "gpu" else []
    if not gpus:
        return None
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (B, T, H, E), jnp.bfloat16)
    k = jax.random.normal(ks[1], (B, T, K, E), jnp.bfloat16)
    v = jax.random.normal(ks[2], (B, T, K, E), jnp.bfloat16)
    seg = jnp.zeros((B, T), jnp.int32)
    f = fwd_bwd("reference", 512)
    try:
        jax.block_until_ready(f(q, k, v, seg, q))
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = f(q, k, v, seg, q)
        jax.block_until_ready(out)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return (time.perf_counter() - t0) / repeats


def _fmt(row):
    if "error" in row:
        need = f" (needs {row['temp_bytes'] / 2**30:.1f} GiB of temporaries)" if "temp_bytes" in row else ""
        return f"{row['backend']:>9} {row['T']:>8} {row['H']:>3}  failed{need}: {row['error'][:120]}"
    return (f"{row['backend']:>9} {row['T']:>8} {row['H']:>3} {row['xla_flops'] / 1e12:>10.2f} "
            f"{row['xla_bytes'] / 2**30:>10.2f} {row['xla_seconds'] * 1e3:>10.2f} "
            f"{row['roofline_seconds'] * 1e3:>10.2f} "
            f"{row['peak_bytes'] / 2**30:>10.3f} {str(row['fits_hbm']):>5} {row['compile_s']:>8.1f}")


HEADER = (f"{'backend':>9} {'T':>8} {'H':>3} {'xla TFLOP':>10} {'xla GiB':>10} {'xla ms':>10} {'roof ms':>10} "
          f"{'peak GiB':>10} {'fits':>5} {'compile':>8}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="v5p:2x2x1")
    ap.add_argument("--seqs", default="8192,32768,131072")
    ap.add_argument("--backends", default="reference,flash,splash")
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--long", default="131072,262144,524288,1048576", help="per-shard lengths; '' skips")
    ap.add_argument("--splash_long_max", type=int, default=262144,
                    help="splash's mask preprocessing is O((T/block)^2) Python work: skip it above this length")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    device = topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices[0]
    print(f"{args.topology}, one chip ({device.device_kind}); GLM-4-9B heads 32:2, E=128, bf16, B=1, fwd+bwd")
    print(HEADER)
    rows = []
    for T in (int(s) for s in args.seqs.split(",") if s):
        for backend in args.backends.split(","):
            rows.append(measure(backend, device, 1, T, 32, 2, 128, args.block))
            print(_fmt(rows[-1]), flush=True)
        gpu = time_on_gpu(1, T, 32, 2, 128)
        if gpu is not None:
            rows.append({"backend": "reference", "T": T, "gpu_seconds": gpu, "gpu": jax.devices()[0].device_kind})
            print(f"reference on {rows[-1]['gpu']}: {gpu}")

    ref = {r["T"]: r for r in rows if r["backend"] == "reference" and "temp_bytes" in r and "long" not in r}
    if len(ref) >= 2:
        for (t0, r0), (t1, r1) in zip(sorted(ref.items()), sorted(ref.items())[1:]):
            print(f"reference temporaries {t0}->{t1}: x{r1['temp_bytes'] / r0['temp_bytes']:.1f} "
                  f"(T^2 would be x{(t1 / t0) ** 2:.0f})")
    for name in ("flash", "splash"):
        mine = {r["T"]: r for r in rows if r["backend"] == name and "peak_bytes" in r}
        for (t0, r0), (t1, r1) in zip(sorted(mine.items()), sorted(mine.items())[1:]):
            print(f"{name} peak memory {t0}->{t1}: x{r1['peak_bytes'] / r0['peak_bytes']:.1f} "
                  f"(T would be x{t1 / t0:.0f})")

    if args.long:
        print("\nper-shard long context (GLM-4-9B-chat-1M heads on tensor=8: 4 q heads, 1 kv head)")
        print(HEADER + f" {'lower':>8}")
        for T in (int(s) for s in args.long.split(",") if s):
            for backend in ("flash", "splash"):
                if backend == "splash" and T > args.splash_long_max:
                    rows.append({"backend": backend, "T": T, "long": True,
                                 "error": f"skipped: above --splash_long_max={args.splash_long_max}"})
                    print(f"{backend:>9} {T:>8}   skipped (mask preprocessing time; see --splash_long_max)")
                    continue
                row = measure(backend, device, 1, T, 4, 1, 128, args.block)
                row["long"] = True
                rows.append(row)
                print(_fmt(row) + (f" {row.get('lower_s', float('nan')):>8.1f}" if "error" not in row else ""),
                      flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"topology": args.topology, "device_kind": device.device_kind, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
