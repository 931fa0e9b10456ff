"""GLM-4-32B-0414 at seq 8192, batch 256, FSDP over every chip: which v5p slice fits the real train
step in HBM, and what does the compiled program project there?

    python benchmarks/aot_glm4_32b_0414.py [--topologies=v5p:2x4x4,v5p:4x4x4] [--out=aot_glm4_32b_0414.json]

Compiles with libtpu on the CPU (no TPU needed), one topology after another. A slice whose step
XLA cannot place in HBM fails to compile (RESOURCE_EXHAUSTED); that row records XLA's message
(how much the temporaries need, how much HBM there is) instead of a report.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from glm_jax import aot, config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topologies", default="v5p:2x4x4,v5p:4x4x4")
    ap.add_argument("--seq_len", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default="aot_glm4_32b_0414.json")
    a = ap.parse_args()
    cd = config.load_config_dict(os.path.join(REPO, "configs", "glm4_32b_0414.py"))
    cfg = config.from_config_dict(config.apply_overrides(cd, [
        f"train.seq_len={a.seq_len}", f"train.batch_size={a.batch}", "mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1"]))
    rows = []
    for topology in a.topologies.split(","):
        try:
            report = aot.plan(cfg, topology)
        except Exception as e:  # noqa: BLE001 - libtpu's compile errors are bare runtime errors
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            message = str(e).split("RESOURCE_EXHAUSTED:", 1)[1].strip().splitlines()[0]
            rows.append({"topology": topology, "fits": False, "compile_error": message})
            print(f"{topology}: does not fit: {message}")
            continue
        rows.append({"fits": report["fits"], **report})
        print(aot.format_report(report))
        print(f"compile time {report['compile_seconds']:.0f} s")
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "attention": cfg.model.attention, "remat": cfg.model.remat, "rows": rows}, f,
                  indent=2)


if __name__ == "__main__":
    main()
