"""Conversion throughput and peak memory, both ways, for a ~1 GB (fp32) GLM model.

    python benchmarks/convert.py [--out=benchmarks/results/convert.json] [--dir=/tmp/convert_bench]

Makes a params-only checkpoint of a ~290M-parameter GLM (random weights), then times
`python -m glm_jax.convert to-hf` (fp32 and bf16) and `from-hf` as separate processes and reads
each one's peak RSS from the OS. The baseline of each direction is the same command on the ~6M
parameter debug model (same imports, tokenizer export, orbax and tensorstore set-up): peak minus
baseline is what converting the bigger model costs, and "net GB/s" leaves out the baseline's
seconds. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["model.vocab_size=32768", "model.hidden_size=1536", "model.num_layers=8", "model.num_heads=12",
             "model.kv_groups=2", "model.head_dim=128", "model.ffn_hidden_size=4096"]
ENV = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def _run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status:
        raise RuntimeError(f"{args} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024 / 2**30  # ru_maxrss is KiB on Linux


MAKE_CKPT = """
import sys, jax
from glm_jax import config, model
from glm_jax.train.checkpoint import save_params
cfg = config.load("configs/debug.py", sys.argv[2:])
save_params(sys.argv[1], model.init_params(cfg.model, jax.random.key(0)), cfg)
print(model.param_count(cfg.model))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="/tmp/convert_bench")
    p.add_argument("--out", default="benchmarks/results/convert.json")
    a = p.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    os.makedirs(a.dir)
    ckpt, tiny = os.path.join(a.dir, "ckpt"), os.path.join(a.dir, "tiny")
    out = subprocess.run([sys.executable, "-c", MAKE_CKPT, ckpt, *OVERRIDES], env=ENV, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    subprocess.run([sys.executable, "-c", MAKE_CKPT, tiny], env=ENV, cwd=REPO, check=True, capture_output=True)
    n_params = int(out.strip().splitlines()[-1])
    gb = n_params * 4 / 1e9
    over = [f"--config.{o}" for o in OVERRIDES]

    def to_hf(src, out, dtype):
        return ["-m", "glm_jax.convert", "to-hf", f"--workdir={src}", f"--out={out}", f"--dtype={dtype}",
                "--max_shard_mb=256"]

    def from_hf(src, out, overrides):
        return ["-m", "glm_jax.convert", "from-hf", f"--hf={src}", "--config=configs/debug.py", *overrides,
                f"--out={out}"]

    base = {"to-hf": _run(to_hf(tiny, f"{a.dir}/tiny_hf", "float32")),  # (seconds, peak RSS GiB)
            "from-hf": _run(from_hf(f"{a.dir}/tiny_hf", f"{a.dir}/tiny_back", []))}
    rows = []
    for name, args in [
        ("to-hf fp32", to_hf(ckpt, f"{a.dir}/hf32", "float32")),
        ("to-hf bf16", to_hf(ckpt, f"{a.dir}/hf16", "bfloat16")),
        ("from-hf fp32", from_hf(f"{a.dir}/hf32", f"{a.dir}/back32", over)),
        ("from-hf bf16", from_hf(f"{a.dir}/hf16", f"{a.dir}/back16", over)),
    ]:
        wall, rss = _run(args)
        base_wall, base_rss = base[name.split()[0]]
        above = rss - base_rss
        rows.append({"direction": name, "seconds": wall, "gb_per_s": gb / wall,
                     "gb_per_s_above_baseline": gb / (wall - base_wall), "peak_rss_gib": rss,
                     "above_baseline_gib": above, "above_baseline_per_model": above * 2**30 / 1e9 / gb})
    print(f"model: {n_params:,} params = {gb:.2f} GB fp32; baseline (same command, debug model): "
          + ", ".join(f"{k} {t:.1f} s, {m:.2f} GiB" for k, (t, m) in base.items()))
    print(f"{'direction':14} {'seconds':>8} {'GB/s':>6} {'net GB/s':>9} {'peak RSS GiB':>13} {'above base':>11} "
          f"{'above / model':>14}")
    for r in rows:
        print(f"{r['direction']:14} {r['seconds']:8.1f} {r['gb_per_s']:6.2f} {r['gb_per_s_above_baseline']:9.2f} "
              f"{r['peak_rss_gib']:13.2f} {r['above_baseline_gib']:11.2f} {r['above_baseline_per_model']:14.2f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"params": n_params, "model_gb_fp32": gb, "baseline_rss_gib": base, "rows": rows}, f, indent=2)
    print(f"wrote {a.out}")
    shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
