"""What logging every step costs: steps/s of the debug run with `train.log_every=1` against `=50`.

    python benchmarks/log_cadence.py [--steps=151] [--cadences=1,50] [--out=benchmarks/results/log_cadence.json]

Each cadence is the README's own train command (configs/debug.py, fsdp=4 x tensor=2 on 8
simulated CPU devices, the bundled mixture; one shared data cache built by the first run) run
in a fresh workdir, checkpoints only at the end. Steps/s come from the run's own metrics rows:
every row carries its flush window's wall time per step, and the launch's first step (the
compile) is left out. A flush is where the host waits on the device (metrics fetched, non-finite
check), so log_every=1 waits every step and log_every=50 once in 50. The cadences run in
alternation, twice each, in one invocation: compare ratios from the same run only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def run_once(workdir: str, cache: str, steps: int, log_every: int) -> float:
    """Steps per second of one debug run (its metrics rows, compile step left out)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "glm_jax.train", "--config=configs/debug.py", f"--workdir={workdir}",
           "--config.mesh.fsdp=4", "--config.mesh.tensor=2", f"--config.train.steps={steps}",
           f"--config.train.log_every={log_every}", f"--config.checkpoint.every_steps={steps}",
           f"--config.data.cache_dir={cache}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"train run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    from glm_jax.train import metrics  # noqa: PLC0415 - after the run: this process needs no JAX devices

    rows = [r for r in metrics.read_rows(workdir) if r["step"] > 1]
    return len(rows) / sum(r["step_time"] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=151)
    ap.add_argument("--cadences", default="1,50")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "log_cadence.json"))
    a = ap.parse_args()
    cadences = [int(c) for c in a.cadences.split(",")]
    results = {c: [] for c in cadences}
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        for rep in range(a.repeats):
            for c in cadences:
                sps = run_once(os.path.join(tmp, f"run_{c}_{rep}"), cache, a.steps, c)
                results[c].append(sps)
                print(f"log_every={c:<4} repeat {rep}: {sps:.2f} steps/s", flush=True)
    base = statistics.median(results[cadences[-1]])
    print(f"\n{'log_every':>9} {'steps/s (median)':>17} {'vs log_every=' + str(cadences[-1]):>18}")
    for c in cadences:
        med = statistics.median(results[c])
        print(f"{c:>9} {med:17.2f} {med / base:18.3f}")
    with open(a.out, "w") as f:
        json.dump({"steps": a.steps, "model": "debug", "mesh": "fsdp=4 x tensor=2 (8 CPU devices)",
                   "cpu": _cpu(), "steps_per_second": {str(c): results[c] for c in cadences}}, f, indent=2)
    print(f"wrote {a.out}")


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


if __name__ == "__main__":
    main()
