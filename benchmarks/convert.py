"""Conversion throughput and peak memory, both ways, for a ~1 GB (fp32) GLM model.

    python benchmarks/convert.py [--out=benchmarks/results/convert.json] [--dir=/tmp/convert_bench]

Makes a params-only checkpoint of a ~290M-parameter GLM (random weights), then times
`python -m glm_jax.convert to-hf` (fp32 and bf16) and `from-hf` as separate processes and reads
each one's peak RSS from the OS. Prints a table and writes JSON.
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
    ckpt = os.path.join(a.dir, "ckpt")
    out = subprocess.run([sys.executable, "-c", MAKE_CKPT, ckpt, *OVERRIDES], env=ENV, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    n_params = int(out.strip().splitlines()[-1])
    gb = n_params * 4 / 1e9
    over = [f"--config.{o}" for o in OVERRIDES]
    rows = []
    for name, args, nbytes in [
        ("to-hf fp32", ["-m", "glm_jax.convert", "to-hf", f"--workdir={ckpt}", f"--out={a.dir}/hf32", "--dtype=float32", "--max_shard_mb=256"], gb),
        ("to-hf bf16", ["-m", "glm_jax.convert", "to-hf", f"--workdir={ckpt}", f"--out={a.dir}/hf16", "--dtype=bfloat16", "--max_shard_mb=256"], gb),
        ("from-hf fp32", ["-m", "glm_jax.convert", "from-hf", f"--hf={a.dir}/hf32", "--config=configs/debug.py", *over,
                          f"--out={a.dir}/back32"], gb),
        ("from-hf bf16", ["-m", "glm_jax.convert", "from-hf", f"--hf={a.dir}/hf16", "--config=configs/debug.py", *over,
                          f"--out={a.dir}/back16"], gb),
    ]:
        wall, rss = _run(args)
        rows.append({"direction": name, "seconds": wall, "gb_per_s": nbytes / wall, "peak_rss_gib": rss})
    base = _run(["-c", "import jax, glm_jax.convert.hf, glm_jax.train.checkpoint, glm_jax.data.tasks"])[1]
    print(f"model: {n_params:,} params = {gb:.2f} GB fp32; a bare process with the imports peaks at {base:.2f} GiB")
    print(f"{'direction':14} {'seconds':>8} {'GB/s':>6} {'peak RSS GiB':>13} {'RSS / model':>12}")
    for r in rows:
        print(f"{r['direction']:14} {r['seconds']:8.1f} {r['gb_per_s']:6.2f} {r['peak_rss_gib']:13.2f} "
              f"{r['peak_rss_gib'] * 2**30 / 1e9 / gb:12.2f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"params": n_params, "model_gb_fp32": gb, "import_baseline_rss_gib": base, "rows": rows}, f, indent=2)
    print(f"wrote {a.out}")
    shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
