"""What will a run cost? Compile the real train step for a TPU topology, without a TPU.

    python -m glm_jax.aot --config=configs/glm4_9b.py --topology=v5p:4x4x8 --config.train.seq_len=8192 \\
        [--out=report.json] [--memory_only]

Uses libtpu's compiler through `jax.experimental.topologies.get_topology_desc` (topology names
like v4:2x2x2, v5e:2x2, v5p:4x4x8, v6e:4x4, v7:2x2x1). Prints per-device HBM (arguments,
temporaries, outputs, total vs capacity; "does not fit by X GiB"), FLOPs per step as XLA counts
them next to the model formula's (`metrics.train_flops_per_token`), bytes, a roofline step time
(XLA's own estimate when it gives one), both MFUs (XLA-counted and model FLOPs over that step
time; no floor: a model MFU above the XLA-counted one is not shown, since the step time it would
rest on comes from FLOPs XLA did not see), and every collective by kind and bytes.

How costs are counted. XLA's cost analysis counts a loop body once, so FLOPs, bytes and XLA's
time estimate come from loop-free variants of the step: layers unrolled (1 and 2 layers), the
loss in one chunk, and without grad accumulation at 1 and 2 micro-batches' rows; the four
corners extrapolate bilinearly to L layers x A micro-batches (two compiles when A = 1).
Collectives come from the real program's HLO, ops inside a while loop multiplied by its trip
count, a tuple-shaped (variadic) collective counted as the sum of its shapes. Pallas kernels
count what they declare: our flash kernel and splash (wrapped) declare block-sparse costs.
Where libtpu cannot compile for a generation, the error says so. `--memory_only` compiles the
real step alone (HBM, collectives; a minute where a large MoE's loop-free variants take hours).
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

from glm_jax import accelerators, config as config_lib, sharding  # noqa: E402
from glm_jax.accelerators import GiB  # noqa: E402
from glm_jax.config import Config  # noqa: E402
from glm_jax.train import metrics as metrics_lib  # noqa: E402
from glm_jax.train import optimizer as opt_lib, validation  # noqa: E402
from glm_jax.train.state import sharded_abstract_state  # noqa: E402
from glm_jax.train.step import abstract_batch, make_train_step  # noqa: E402

# Generation names users type -> libtpu's topology prefix.
_ALIASES = {"v6": "v6e", "v7": "tpu7x", "v7x": "tpu7x", "ironwood": "tpu7x", "trillium": "v6e"}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")


def _libtpu_version() -> str:
    import importlib.metadata  # noqa: PLC0415

    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: pip install -e '.[tpu]')"


def topology_devices(name: str) -> list:
    from jax.experimental import topologies  # noqa: PLC0415

    gen, sep, shape = name.partition(":")
    name = _ALIASES.get(gen.lower(), gen) + sep + shape
    # v4 and v5p chips have two TensorCores run as one device ("megacore"), as jax.devices() shows them.
    megacore = {"chip_config_name": "megacore"} if name.split(":")[0] in ("v4", "v5p") else {}
    try:
        try:
            return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **megacore).devices)
        except Exception as e:  # a slice smaller than one host (v5e:1x1): the host is the slice
            if "chips_per_host_bounds" not in str(e) or not re.fullmatch(r"\d+(x\d+)*", shape):
                raise
            bounds = ([int(d) for d in shape.split("x")] + [1, 1])[:3]
            return list(topologies.get_topology_desc(topology_name=name, platform="tpu", chips_per_host_bounds=bounds,
                                                     **megacore).devices)
    except Exception as e:  # libtpu raises a bare RuntimeError / XlaRuntimeError
        raise ValueError(f"--topology={name!r} is not a TPU topology libtpu {_libtpu_version()} knows ({e}); use "
                         f"names like v4:2x2x2, v5e:2x2, v5p:4x4x8, v6e:4x4, v7:2x2x1 (= tpu7x:2x2x1)") from None


def compile_train_step(cfg: Config, devices: list):
    """Lowers and compiles the real (donating, sharded) train step for `devices`; a generation
    this libtpu cannot compile for is a ValueError that says so."""
    mesh = sharding.make_mesh(cfg.mesh, devices)
    validation.check_stage(cfg, dict(mesh.shape))
    tx = opt_lib.make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        step = make_train_step(cfg, mesh, tx=tx)
        state = sharded_abstract_state(cfg, mesh, tx)
        reference = (state.params,) if cfg.train.objective == "dpo" else ()  # DPO: the frozen reference, sharded alike
        lowered = step.lower(state, abstract_batch(cfg, mesh), *reference)
        try:
            return lowered.compile(), mesh
        except Exception as e:  # XlaRuntimeError from libtpu's compiler
            kind = devices[0].device_kind
            raise ValueError(f"libtpu {_libtpu_version()} cannot compile this train step for {kind} "
                             f"({len(devices)} devices): {str(e)[:500]}") from None


def _shape_bytes(text: str) -> int:
    """Bytes of an HLO result type; a tuple (variadic collective) is the sum of its shapes."""
    return sum(_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in _SHAPE.findall(text))


def collectives(hlo: str) -> dict[str, dict[str, float]]:
    """{kind: {count, bytes}} per step, from optimized HLO text. Ops in a while body (the layer
    scan, grad accumulation, the loss chunks) are multiplied by its trip count, read from the
    loop condition's constant bound. An async pair is counted at its `-done` op, whose result
    is the collective's output (a `-start` result also carries the operands); a tuple result
    counts the sum of its shapes. A ragged all-to-all counts the smaller of its data operand and
    its result: the rows a device sends on average (the dispatch sends its whole operand and
    receives into a worst-case buffer; the return trip sends back what it received)."""
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
                bounds = [int(c) for c in re.findall(r"s32\[\](?:\{[^}]*\})? constant\((\d+)\)", "\n".join(comps.get(w.group(1), [])))]
                visit(w.group(2), factor * (max(bounds) if bounds else 1), depth + 1)
                continue
            if "-done(" in line:  # an async pair names its computation on -start and -done: count it once
                continue
            for callee in re.findall(r"(?:to_apply|calls|branch_computations=\{)[=%]*([\w.\-]+)", line):
                visit(callee, factor, depth + 1)

    if entry:
        visit(entry, 1)
    types = {m.group(1): m.group(2) for lines in comps.values() for line in lines
             if (m := re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?) [\w\-]+\(", line))}
    out: dict[str, dict[str, float]] = {}
    for name, lines in comps.items():
        for line in lines:
            for kind in COLLECTIVES:
                m = re.search(rf"= (.*?) {kind}(-done)?\((?:[^%]*%)?([\w.\-]*)", line)
                if m:
                    size = _shape_bytes(m.group(1))
                    if kind == "ragged-all-to-all":
                        size = min(size, _shape_bytes(types.get(m.group(3), m.group(1))))
                    row = out.setdefault(kind, {"count": 0, "bytes": 0})
                    row["count"] += mult.get(name, 1)
                    row["bytes"] += mult.get(name, 1) * size
    return out


def program_costs(compiled) -> dict:
    """Per-device costs XLA reports for one compiled program: flops, bytes accessed and its own
    optimal-time estimate (None when it gives none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    seconds = float(cost.get("optimal_seconds", -1.0))
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0)),
            "seconds": seconds if seconds > 0 else None}


def _repeated_layers(cfg: Config) -> int:
    """The layers the costs extrapolate over: all of them, or a MoE model's MoE layers (its dense
    prefix and MTP module are in every loop-free variant, so in the constant term)."""
    return cfg.model.num_moe_layers if cfg.model.is_moe else cfg.model.num_layers


def _loop_free(cfg: Config, layers: int, micro_batches: int) -> Config:
    """The step with no while loop XLA's cost analysis would count once: `layers` unrolled
    layers (a MoE model: its dense prefix and `layers` MoE layers), the loss in one chunk,
    `micro_batches` micro-batches' rows in one pass.

    A dropless MoE step's experts are costed at balanced load, in one dispatch round: with
    capacity factor 1 each expert shard receives its average A = tokens x k rows, which is the
    work dropless routing does once the balancing bias has done its job (a busier shard makes the
    real step slower). Dropless, XLA would count the grouped matmul over the worst-case receive
    buffer of P x A rows, P = expert shards (ragged_dot as 2 x rows x K x N, megablox as it
    declares). Rounds only bound memory: n / m rounds of m tokens do one round's FLOPs (their
    bytes add the local experts' weights read once a round, counted once here), and one round of
    balanced buffers fits where a dropless round of all tokens would not."""
    rows = cfg.train.batch_size // cfg.train.grad_accum * micro_batches
    total = cfg.model.num_dense_layers + layers if cfg.model.is_moe else layers
    model = dataclasses.replace(cfg.model, num_layers=total)
    run = dataclasses.replace(cfg.run, scan_layers=False)
    if cfg.model.is_moe:
        run = dataclasses.replace(run, moe_dispatch_tokens=0, moe_capacity_factor=cfg.run.moe_capacity_factor or 1.0)
    train = dataclasses.replace(cfg.train, batch_size=rows, grad_accum=1, loss_chunk=cfg.train.seq_len)
    return dataclasses.replace(cfg, model=model, run=run, train=train)


def _extrapolate(c: dict[tuple[int, int], dict], layers: int, micro: int) -> dict:
    """Costs of L layers x A micro-batches from the loop-free corners c[(n, a)], n, a in {1, 2}
    (a = 1 only when A = 1): each cost is bilinear in (layers, micro-batches), e.g. the
    optimizer runs once whatever A, every micro-batch runs every layer."""
    def at(key):
        v = [c[k][key] for k in sorted(c)]
        if any(x is None for x in v):
            return None
        if len(v) == 2:  # (1, 1), (2, 1)
            return v[0] + (layers - 1) * (v[1] - v[0])
        c11, c12, c21, c22 = v  # sorted: (1,1), (1,2), (2,1), (2,2)
        return (c11 + (layers - 1) * (c21 - c11) + (micro - 1) * (c12 - c11)
                + (layers - 1) * (micro - 1) * (c22 - c21 - c12 + c11))
    return {k: at(k) for k in ("flops", "bytes", "seconds")}


def analyze(cfg: Config, compiled, mesh, costs: dict | None) -> dict:
    """The report: HBM and collectives of the real program `compiled`; per-step `costs` (see `plan`;
    None: FLOPs, bytes, step time and MFUs left out as None)."""
    devices = mesh.devices.size
    kind = mesh.devices.flat[0].device_kind
    chip = accelerators.lookup(kind)
    mem = compiled.memory_analysis()
    arg, out, alias, temp, code = (mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                                   mem.temp_size_in_bytes, mem.generated_code_size_in_bytes)
    total = arg + out - alias + temp + code
    capacity = chip.hbm_bytes // chip.devices_per_chip if chip else None
    peak = metrics_lib.peak_flops_per_device(cfg, kind)  # already per device (TPU7x: half a chip)
    colls = collectives(compiled.as_text())
    coll_bytes = sum(r["bytes"] for r in colls.values())
    tokens = cfg.train.batch_size * cfg.train.seq_len
    model_flops = metrics_lib.train_flops_per_token(cfg.model, cfg.train.seq_len) * tokens
    if costs is None:
        costs = {"flops": None, "bytes": None, "seconds": None}
    report = {
        "model": cfg.model.name, "topology_devices": devices, "device_kind": kind, "mesh": dict(mesh.shape),
        "seq_len": cfg.train.seq_len, "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
        "tokens_per_step": tokens, "attention": cfg.run.attention, "remat": cfg.run.remat,
        "dtype": cfg.run.dtype, "loss_chunk": cfg.train.loss_chunk, "libtpu": _libtpu_version(),
        "hbm_per_device": {"arguments": arg, "outputs": out, "aliased": alias, "temporaries": temp,
                           "generated_code": code, "total": total, "capacity": capacity},
        "fits": (total <= capacity) if capacity else None,
        "model_flops_per_device": model_flops / devices, "model_flops_per_step": model_flops,
        "peak_flops_per_device": peak,
        "collectives": colls,
        "all_to_all_bytes_per_device": sum(colls.get(k, {}).get("bytes", 0) for k in ("all-to-all", "ragged-all-to-all")),
    }
    if costs["flops"] is None:
        return {**report, **dict.fromkeys(
            ("flops_per_device", "xla_to_model_flops", "bytes_accessed_per_device", "xla_optimal_seconds",
             "roofline_seconds", "roofline_step_seconds", "projected_step_seconds", "projected_mfu_xla",
             "projected_mfu_model"), None), "mfu_note": "costs not computed (memory only)"}
    xla_flops = costs["flops"]
    terms = {"compute": xla_flops / peak if peak else 0.0,
             "hbm": costs["bytes"] / chip.hbm_bandwidth if chip else 0.0,
             "collectives": coll_bytes / chip.interconnect_bandwidth if chip else 0.0}
    roofline = max(terms.values())  # collectives overlapped with compute, as XLA schedules FSDP gathers
    step_seconds = max(costs["seconds"] or 0.0, roofline)
    mfu_xla = mfu_model = None
    note = None
    if peak and step_seconds > 0:
        mfu_xla = xla_flops / (step_seconds * peak)
        if model_flops / devices <= xla_flops:
            mfu_model = model_flops / (step_seconds * devices * peak)
        else:  # the step time rests on FLOPs XLA counted; more model FLOPs than that would be invented
            note = (f"XLA counted {xla_flops * devices / model_flops:.0%} of the model formula's FLOPs (a kernel "
                    f"without a cost estimate?): model MFU not shown")
    return {**report, "flops_per_device": xla_flops, "xla_to_model_flops": xla_flops * devices / model_flops,
            "bytes_accessed_per_device": costs["bytes"],
            "xla_optimal_seconds": costs["seconds"], "roofline_seconds": terms, "roofline_step_seconds": roofline,
            "projected_step_seconds": step_seconds,
            "projected_mfu_xla": mfu_xla, "projected_mfu_model": mfu_model, "mfu_note": note}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


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
    if r["flops_per_device"] is None:  # memory only
        lines.append(f"FLOPs, bytes, step time: {r['mfu_note']}")
        return "\n".join(lines + _collective_lines(r))
    lines.append(f"FLOPs per device per step      XLA-counted {r['flops_per_device']:.4g}   "
                 f"model formula {r['model_flops_per_device']:.4g}   (XLA / model = {r['xla_to_model_flops']:.2f})")
    lines.append(f"bytes accessed per device      {r['bytes_accessed_per_device']:.4g}")
    t = r["roofline_seconds"]
    if r["xla_optimal_seconds"]:
        lines.append(f"projected step time (XLA)      {r['xla_optimal_seconds'] * 1e3:.1f} ms")
    lines.append(f"roofline step time             {r['roofline_step_seconds'] * 1e3:.1f} ms  "
                 f"(compute {t['compute'] * 1e3:.1f} ms, HBM {t['hbm'] * 1e3:.1f} ms, "
                 f"collectives {t['collectives'] * 1e3:.1f} ms)")
    lines.append(f"projected MFU                  XLA-counted {_pct(r['projected_mfu_xla'])}   "
                 f"model FLOPs {_pct(r['projected_mfu_model'])}")
    if r.get("mfu_note"):
        lines.append(f"  note: {r['mfu_note']}")
    return "\n".join(lines + _collective_lines(r))


def _collective_lines(r: dict) -> list[str]:
    lines = ["collectives per step (per device):"]
    for kind, row in sorted(r["collectives"].items()):
        lines.append(f"  {kind:<20}{int(row['count']):6d} ops  {row['bytes'] / GiB:10.3f} GiB")
    return lines


def step_costs(cfg: Config, devices: list) -> dict:
    """Per-device {flops, bytes, seconds} of one train step as XLA counts them, from the
    loop-free corners (1 or 2 layers x 1 or 2 micro-batches) extrapolated to L x A."""
    A = cfg.train.grad_accum
    corners = {(n, a): program_costs(compile_train_step(_loop_free(cfg, n, a), devices)[0])
               for n in (1, 2) for a in ((1, 2) if A > 1 else (1,))}
    return _extrapolate(corners, _repeated_layers(cfg), A)


def plan(cfg: Config, topology: str, costs: bool = True) -> dict:
    """Compiles the real step (memory, collectives) and its loop-free variants (FLOPs, bytes,
    XLA's time), extrapolated to the model's depth and micro-batch count (see the module docstring).
    costs=False: the real step only (minutes, where a large MoE's loop-free variants take hours)."""
    t0 = time.perf_counter()
    devices = topology_devices(topology)
    compiled, mesh = compile_train_step(cfg, devices)
    report = analyze(cfg, compiled, mesh, step_costs(cfg, devices) if costs else None)
    report["topology"] = topology
    report["compile_seconds"] = time.perf_counter() - t0
    return report


def main(argv):
    del argv
    from absl import flags  # noqa: PLC0415

    cfg = config_lib.from_config_dict(flags.FLAGS.config)
    report = plan(cfg, flags.FLAGS.topology, costs=not flags.FLAGS.memory_only)
    print(format_report(report))
    if flags.FLAGS.out:
        with open(flags.FLAGS.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from glm_jax import cli

    config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file.", lock_config=False)
    flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:2x2, v5p:4x4x8.")
    flags.DEFINE_string("out", None, "Write the report as JSON here.")
    flags.DEFINE_bool("memory_only", False, "Compile the real step only: HBM and collectives, no FLOPs or step time.")
    flags.mark_flags_as_required(["config", "topology"])
    cli.run(main, tensorflow=False)
