"""GLM-4-9B, seq 8192, on v5p:4x4x8 (128 chips, FSDP over all of them): does the real train step
fit in HBM, and what MFU does the compiled program project?

    python benchmarks/aot_glm4_9b.py [--topology=v5p:4x4x8] [--batch=256] [--out=aot_glm4_9b.json]

Compiles with libtpu on the CPU (no TPU needed); prints glm_jax.aot's table and writes JSON.
If this tree has no kernel for the config's attention backend, it falls back to "reference"
(XLA) attention and says so.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from glm_jax import aot, config  # noqa: E402
from glm_jax.model import attention  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topology", default="v5p:4x4x8")
    ap.add_argument("--seq_len", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--remat", default="full")
    ap.add_argument("--out", default="aot_glm4_9b.json")
    a = ap.parse_args()
    cd = config.load_config_dict(os.path.join(REPO, "configs", "glm4_9b.py"))
    overrides = [f"train.seq_len={a.seq_len}", f"train.batch_size={a.batch}", "mesh.data=1", "mesh.fsdp=-1",
                 "mesh.tensor=1", f"model.remat={a.remat}"]
    if cd.model.attention not in attention._backends():
        print(f"note: attention backend {cd.model.attention!r} is not in this tree; using 'reference'")
        overrides.append("model.attention='reference'")
    cfg = config.from_config_dict(config.apply_overrides(cd, overrides))
    report = aot.plan(cfg, a.topology)
    print(aot.format_report(report))
    print(f"compile time {report['compile_seconds']:.0f} s")
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "attention": cfg.model.attention, **report}, f, indent=2)


if __name__ == "__main__":
    main()
