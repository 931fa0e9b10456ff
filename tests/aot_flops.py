"""The planner's XLA-counted FLOPs of the debug train step against the model formula.

    python -m tests.aot_flops [reference,flash] [0,1]   # one JSON line per (backend, case): xla, model

Run in its own process by tests/test_aot.py (libtpu's compiler next to the CPU backend)."""

import json
import os
import sys

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from glm_jax import aot, config  # noqa: E402
from glm_jax.train import metrics  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (topology, overrides); with sequence=4 each shard holds two chunks of 256 / 8 = 32 queries, so
# flash's query block is the chunk (the TPU accepts a block equal to the whole local length).
# One chip gets 2 rows of 256, not the debug config's 8: libtpu's compile time grows with a
# device's tokens (~60 s a variant at 2,048 here, ~15 s at 512); sequence=4 leaves 512 a device.
# Fewer tokens than that and the optimizer's share (replicated, counted once per device) shows:
# sequence=4 with 4 rows counts 1.107 x the formula.
CASES = [("v5e:1x1", ["mesh.fsdp=1", "train.batch_size=2"]),
         ("v5e:2x2", ["mesh.fsdp=1", "mesh.sequence=4", "run.attention_block_q=32"])]

if __name__ == "__main__":
    backends = sys.argv[1].split(",") if len(sys.argv) > 1 else ["reference", "flash"]
    cases = [CASES[int(i)] for i in sys.argv[2].split(",")] if len(sys.argv) > 2 else CASES
    for backend in backends:
        for topology, mesh in cases:
            cfg = config.load(os.path.join(REPO, "configs", "debug.py"), [*mesh, f"run.attention='{backend}'"])
            devices = aot.topology_devices(topology)
            xla = aot.step_costs(cfg, devices)["flops"] * len(devices)
            model = metrics.train_flops_per_token(cfg.model, cfg.train.seq_len) * cfg.train.batch_size * cfg.train.seq_len
            print(json.dumps({"attention": backend, "topology": topology, "mesh": mesh, "xla": xla, "model": model}),
                  flush=True)
