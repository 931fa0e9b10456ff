"""Where our CPU train step's time goes: a jax.profiler trace of jit(value_and_grad(loss)) on the
model of train_step_vs_hf.py, each XLA:CPU thunk attributed to a category by its HLO.

    python benchmarks/train_step_profile.py [--what=fwd_bwd|forward] [--layers=12] [--out=...json]

Categories: matmuls (fusions holding a dot; GFLOP and GFLOP/s from the HLO shapes), transposed
copies (copy/transpose fusions), scan stacking (dynamic-slice / dynamic-update-slice / broadcast
of the per-layer residuals and gradients), T x S attention elementwise (fusions over
[..., T, S]), the loss's [B, C, V] elementwise work and the rest. Thunks overlap (XLA:CPU runs independent ones concurrently, e.g.
a layer's dX and dW matmuls), so the sums exceed the wall time; "busy" is the wall time with at
least one thunk running. Plain `dot` thunks (Eigen) only record their dispatch.
"""

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import train_step_vs_hf as bench  # noqa: E402
from glm_jax.config import Config, MeshConfig, TrainConfig  # noqa: E402
from glm_jax.model import spec  # noqa: E402
from glm_jax.train import step as step_lib  # noqa: E402

_DEF = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]")


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, cur = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m and not line.startswith(" "):
            cur = comps.setdefault(m.group(1), [])
        elif cur is not None:
            cur.append(line)
    return comps


def _dot_flops(lines: list[str]) -> float:
    shapes = {m.group(1): [int(d) for d in m.group(3).split(",") if d] for m in map(_DEF.match, lines) if m}
    flops = 0.0
    for line in lines:
        if " dot(" not in line:
            continue
        m = _DEF.match(line)
        lhs = re.search(r"dot\(%([\w.\-]+)", line).group(1)
        contract = [int(d) for d in re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1).split(",") if d]
        n = 1
        for d in m.group(3).split(","):
            n *= int(d) if d else 1
        for d in contract:
            n *= shapes[lhs][d]
        flops += 2 * n
    return flops


def _category(name: str, shape: str, flops: float, tsize: int, vocab: int) -> str:
    if flops:
        return "matmuls"
    if "dynamic-update-slice" in name or "dynamic-slice" in name or name.startswith("wrapped_broadcast"):
        return "scan stacking (residual / gradient slices, zero-filled stacks)"
    dims = [int(d) for d in re.findall(r"\d+", shape.split("{")[0])]
    if len(dims) >= 2 and dims[-1] == dims[-2] == tsize:
        return "T x S attention elementwise"
    if dims and dims[-1] == vocab:
        return "loss [B, C, V] elementwise"
    if "copy" in name or "transpose" in name:
        return "transposed copies"
    return "other elementwise / reductions"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", default="fwd_bwd", choices=["fwd_bwd", "forward"])
    ap.add_argument("--layers", type=int, default=bench.MODEL.num_layers)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    m = dataclasses.replace(bench.MODEL, num_layers=a.layers)
    cfg = Config(model=m, mesh=MeshConfig(fsdp=1), train=TrainConfig(seq_len=bench.T, batch_size=bench.B, steps=10))
    params = spec.init_params(m, jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in bench.batch_arrays().items()}
    loss = lambda p, b: step_lib.loss_sums(p, b, cfg)[0]
    fn = jax.jit(jax.value_and_grad(loss) if a.what == "fwd_bwd" else loss)
    compiled = fn.lower(params, batch).compile()
    jax.block_until_ready(compiled(params, batch))
    d = tempfile.mkdtemp(prefix="glm_profile_")
    t = time.perf_counter()
    with jax.profiler.trace(d):
        for _ in range(a.runs):
            jax.block_until_ready(compiled(params, batch))
    wall = (time.perf_counter() - t) / a.runs
    comps = _computations(compiled.as_text())
    fusions = {}
    for lines in comps.values():
        for line in lines:
            f = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) fusion\(.*calls=%([\w.\-]+)", line)
            if f:
                fusions[f.group(1)] = (f.group(2), _dot_flops(comps.get(f.group(3), [])))
    events = [e for e in json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
              if e.get("ph") == "X" and e["name"] in fusions]
    cat_ms, cat_gf, per = collections.defaultdict(float), collections.defaultdict(float), collections.defaultdict(float)
    for e in events:
        shape, fl = fusions[e["name"]]
        c = _category(e["name"], shape, fl, bench.T, m.vocab_size)
        cat_ms[c] += e["dur"] / 1e3 / a.runs
        cat_gf[c] += fl / 1e9 / a.runs
        per[(c, e["name"], shape)] += e["dur"] / 1e3 / a.runs
    edges = sorted([(e["ts"], 1) for e in events] + [(e["ts"] + e["dur"], -1) for e in events])
    busy, depth, last = 0.0, 0, edges[0][0]
    for ts, step in edges:
        busy += (ts - last) if depth else 0
        depth, last = depth + step, ts
    print(f"{a.what}, {a.layers} layers: {wall:.2f} s/run wall, thunks busy {busy / 1e6 / a.runs:.2f} s/run, "
          f"load {os.getloadavg()}")
    out = {"what": a.what, "layers": a.layers, "wall_seconds": wall, "busy_seconds": busy / 1e6 / a.runs,
           "load_average": os.getloadavg(), "categories": {}}
    for c, ms in sorted(cat_ms.items(), key=lambda x: -x[1]):
        gf = cat_gf[c]
        print(f"  {ms / 1e3:7.2f} s  {c}" + (f"  ({gf:.0f} GFLOP, {gf / ms * 1e3:.1f} GFLOP/s per thunk)" if gf else ""))
        out["categories"][c] = {"seconds": ms / 1e3, "gflop": gf}
    print("  largest non-matmul thunks:")
    for (c, n, shape), ms in sorted(((k, v) for k, v in per.items() if k[0] != "matmuls"), key=lambda x: -x[1])[:8]:
        print(f"    {ms:8.1f} ms  {n:34s} {shape.split('{')[0]:28s} {c}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
