"""What will a run cost? Compile the real train step for a TPU topology, without a TPU.

    python -m glm_jax.aot --config=configs/glm4_9b.py --topology=v5p:4x4x8 --config.train.seq_len=8192 \\
        [--out=report.json]

Uses libtpu's compiler through `jax.experimental.topologies.get_topology_desc` (topology names
like v4:2x2x2, v5e:2x2, v5p:4x4x8, v6e:4x4). Prints per-device HBM (arguments, temporaries,
outputs, total vs capacity; "does not fit by X GiB"), FLOPs and bytes per step, a roofline step
time (XLA's own estimate when it gives one), projected MFU, and every collective by kind and
bytes (ops inside a loop counted once per iteration). XLA's cost analysis counts a loop body once,
so per-step costs come from unrolled 1- and 2-layer compiles extrapolated to the model's depth.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections import defaultdict

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402

from glm_jax import config as config_lib, sharding  # noqa: E402
from glm_jax.config import Config  # noqa: E402
from glm_jax.train import metrics as metrics_lib  # noqa: E402
from glm_jax.train import optimizer as opt_lib, validation  # noqa: E402
from glm_jax.train.state import sharded_abstract_state  # noqa: E402
from glm_jax.train.step import abstract_batch, make_train_step  # noqa: E402

GiB = 1024 ** 3

# Per chip: HBM bytes, HBM bandwidth (B/s), ICI bandwidth per chip (B/s, all links one way), by
# the device kind libtpu reports. Public Cloud TPU figures.
CHIPS = {
    "TPU v4": dict(hbm=32 * GiB, hbm_bw=1.2e12, ici_bw=2.7e11),
    "TPU v5 lite": dict(hbm=16 * GiB, hbm_bw=8.1e11, ici_bw=2.0e11),
    "TPU v5": dict(hbm=95 * GiB, hbm_bw=2.76e12, ici_bw=6.0e11),
    "TPU v5p": dict(hbm=95 * GiB, hbm_bw=2.76e12, ici_bw=6.0e11),
    "TPU v6 lite": dict(hbm=32 * GiB, hbm_bw=1.64e12, ici_bw=4.5e11),
}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")


def topology_devices(name: str) -> list:
    from jax.experimental import topologies  # noqa: PLC0415

    # v4 and v5p chips have two TensorCores run as one device ("megacore"), as jax.devices() shows them.
    megacore = {"chip_config_name": "megacore"} if name.split(":")[0] in ("v4", "v5p") else {}
    try:
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **megacore).devices)
    except Exception as e:  # libtpu raises a bare RuntimeError / XlaRuntimeError
        raise ValueError(f"--topology={name!r} is not a TPU topology libtpu knows ({e}); use names like "
                         f"v4:2x2x2, v5e:2x2, v5p:4x4x8, v6e:4x4") from None


def compile_train_step(cfg: Config, devices: list):
    """Lowers and compiles the real (donating, sharded) train step for `devices`."""
    mesh = sharding.make_mesh(cfg.mesh, devices)
    validation.check_stage(cfg, dict(mesh.shape))
    tx = opt_lib.make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        step = make_train_step(cfg, mesh, tx=tx)
        return step.lower(sharded_abstract_state(cfg, mesh, tx), abstract_batch(cfg, mesh)).compile(), mesh


def _shape_bytes(text: str) -> int:
    sizes = [_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in _SHAPE.findall(text)]
    return max(sizes, default=0)


def collectives(hlo: str) -> dict[str, dict[str, float]]:
    """{kind: {count, bytes}} per step, from optimized HLO text. Ops in a while body (the layer
    scan) are multiplied by its trip count, read from the loop condition's constant bound."""
    comps, current = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                comps["__entry__"] = current
        elif current and line.startswith(" "):
            comps[current].append(line)
    entry = comps.pop("__entry__", None)
    mult: dict[str, int] = defaultdict(int)

    def visit(name: str, factor: int, depth: int = 0):
        if name not in comps or depth > 50:
            return
        mult[name] += factor
        for line in comps[name]:
            w = re.search(r"condition=%?([\w.\-]+), body=%?([\w.\-]+)", line)
            if w:
                bounds = [int(c) for c in re.findall(r"s32\[\] constant\((\d+)\)", "\n".join(comps.get(w.group(1), [])))]
                visit(w.group(2), factor * (max(bounds) if bounds else 1), depth + 1)
                continue
            for callee in re.findall(r"(?:to_apply|calls|branch_computations=\{)[=%]*([\w.\-]+)", line):
                visit(callee, factor, depth + 1)

    if entry:
        visit(entry, 1)
    out: dict[str, dict[str, float]] = {}
    for name, lines in comps.items():
        for line in lines:
            for kind in COLLECTIVES:
                m = re.search(rf"= (.*?) {kind}(-start)?\(", line)
                if m:
                    row = out.setdefault(kind, {"count": 0, "bytes": 0})
                    row["count"] += mult.get(name, 1)
                    row["bytes"] += mult.get(name, 1) * _shape_bytes(m.group(1))
    return out


def program_costs(compiled) -> dict:
    """Per-device costs XLA reports for one compiled program: flops, bytes accessed, its own
    optimal-time estimate (None when it gives none) and the collectives."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    seconds = float(cost.get("optimal_seconds", -1.0))
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0)),
            "seconds": seconds if seconds > 0 else None, "collectives": collectives(compiled.as_text())}


def _extrapolate(one: dict, two: dict, layers: int) -> dict:
    """Costs of `layers` layers from unrolled 1- and 2-layer programs: c(L) = c(1) + (L - 1)(c(2) - c(1))."""
    lin = lambda a, b: a + (layers - 1) * (b - a)  # noqa: E731
    kinds = set(one["collectives"]) | set(two["collectives"])
    zero = {"count": 0, "bytes": 0}
    return {"flops": lin(one["flops"], two["flops"]), "bytes": lin(one["bytes"], two["bytes"]),
            "seconds": lin(one["seconds"], two["seconds"]) if one["seconds"] and two["seconds"] else None,
            "collectives": {k: {f: lin(one["collectives"].get(k, zero)[f], two["collectives"].get(k, zero)[f])
                                for f in ("count", "bytes")} for k in sorted(kinds)}}


def analyze(cfg: Config, compiled, mesh, costs: dict) -> dict:
    """The report: HBM of the real program `compiled`; per-step `costs` (see `plan`)."""
    devices = mesh.devices.size
    kind = mesh.devices.flat[0].device_kind
    chip = CHIPS.get(kind, {})
    mem = compiled.memory_analysis()
    arg, out, alias, temp, code = (mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                                   mem.temp_size_in_bytes, mem.generated_code_size_in_bytes)
    total = arg + out - alias + temp + code
    peak = metrics_lib.peak_flops_per_device(cfg, kind)
    coll_bytes = sum(r["bytes"] for r in costs["collectives"].values())
    tokens = cfg.train.batch_size * cfg.train.seq_len
    model_flops = metrics_lib.train_flops_per_token(cfg.model, cfg.train.seq_len) * tokens
    # Pallas kernels report only the costs they declare, so XLA's count can fall below the model's
    # own FLOPs; a step never does less than the model's FLOPs (MFU <= 100%).
    compute_flops = max(costs["flops"], model_flops / devices)
    terms = {"compute": compute_flops / peak if peak else 0.0,
             "hbm": costs["bytes"] / chip["hbm_bw"] if chip else 0.0,
             "collectives": coll_bytes / chip["ici_bw"] if chip else 0.0}
    roofline = max(terms.values())  # collectives overlapped with compute, as XLA schedules FSDP gathers
    step_seconds = max(costs["seconds"] or 0.0, roofline)
    return {
        "model": cfg.model.name, "topology_devices": devices, "device_kind": kind, "mesh": dict(mesh.shape),
        "seq_len": cfg.train.seq_len, "batch_size": cfg.train.batch_size, "tokens_per_step": tokens,
        "attention": cfg.model.attention, "remat": cfg.model.remat,
        "hbm_per_device": {"arguments": arg, "outputs": out, "aliased": alias, "temporaries": temp,
                           "generated_code": code, "total": total, "capacity": chip.get("hbm")},
        "fits": (total <= chip["hbm"]) if chip else None,
        "flops_per_device": costs["flops"], "bytes_accessed_per_device": costs["bytes"],
        "model_flops_per_step": model_flops,
        "xla_optimal_seconds": costs["seconds"], "roofline_seconds": terms, "roofline_step_seconds": roofline,
        "projected_step_seconds": step_seconds,
        "projected_mfu": model_flops / (step_seconds * devices * peak) if peak and step_seconds > 0 else None,
        "collectives": costs["collectives"],
    }


def format_report(r: dict) -> str:
    h = r["hbm_per_device"]
    cap = h["capacity"]
    lines = [f"{r['model']} on {r['topology_devices']} x {r['device_kind']}  mesh {r['mesh']}  "
             f"batch {r['batch_size']} x seq {r['seq_len']}",
             "HBM per device:"]
    for k in ("arguments", "outputs", "aliased", "temporaries", "generated_code", "total"):
        lines.append(f"  {k:<16}{h[k] / GiB:10.3f} GiB")
    if cap:
        verdict = (f"fits ({(cap - h['total']) / GiB:.2f} GiB free of {cap / GiB:.0f} GiB)" if r["fits"]
                   else f"does not fit by {(h['total'] - cap) / GiB:.2f} GiB (capacity {cap / GiB:.0f} GiB)")
        lines.append(f"  {'capacity':<16}{cap / GiB:10.3f} GiB  -> {verdict}")
    lines.append(f"FLOPs per device per step      {r['flops_per_device']:.4g}")
    lines.append(f"bytes accessed per device      {r['bytes_accessed_per_device']:.4g}")
    t = r["roofline_seconds"]
    if r["xla_optimal_seconds"]:
        lines.append(f"projected step time (XLA)      {r['xla_optimal_seconds'] * 1e3:.1f} ms")
    lines.append(f"roofline step time             {r['roofline_step_seconds'] * 1e3:.1f} ms  "
                 f"(compute {t['compute'] * 1e3:.1f} ms, HBM {t['hbm'] * 1e3:.1f} ms, "
                 f"collectives {t['collectives'] * 1e3:.1f} ms)")
    if r["projected_mfu"] is not None:
        lines.append(f"projected MFU                  {100 * r['projected_mfu']:.1f}%")
    lines.append("collectives per step (per device):")
    for kind, row in sorted(r["collectives"].items()):
        lines.append(f"  {kind:<20}{int(row['count']):6d} ops  {row['bytes'] / GiB:10.3f} GiB")
    return "\n".join(lines)


def plan(cfg: Config, topology: str) -> dict:
    """Compiles the real step (memory) and, because XLA's cost analysis counts a loop body once,
    unrolled 1- and 2-layer variants whose costs extrapolate linearly to the model's depth."""
    t0 = time.perf_counter()
    devices = topology_devices(topology)
    compiled, mesh = compile_train_step(cfg, devices)
    if cfg.model.num_layers == 1 or not cfg.model.scan_layers:
        costs = program_costs(compiled)
    else:
        small = [dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_layers=n, scan_layers=False))
                 for n in (1, 2)]
        one, two = (program_costs(compile_train_step(c, devices)[0]) for c in small)
        costs = _extrapolate(one, two, cfg.model.num_layers)
    report = analyze(cfg, compiled, mesh, costs)
    report["topology"] = topology
    report["compile_seconds"] = time.perf_counter() - t0
    return report


def main(argv):
    del argv
    from absl import flags  # noqa: PLC0415

    cfg = config_lib.from_config_dict(flags.FLAGS.config)
    report = plan(cfg, flags.FLAGS.topology)
    print(format_report(report))
    if flags.FLAGS.out:
        with open(flags.FLAGS.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file.", lock_config=False)
    flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:2x2, v5p:4x4x8.")
    flags.DEFINE_string("out", None, "Write the report as JSON here.")
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main)
