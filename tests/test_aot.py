"""AOT: the real train step of the debug model compiles for a TPU topology (v5e:2x2) on CPU."""

import json

import pytest

from tests import cli


def _aot(*args, timeout=300):
    return cli.run("-m", "glm_jax.aot", *args, env=cli.tpu_env(), timeout=timeout, check=False)


@pytest.mark.slow
def test_debug_model_train_step_compiles_for_v5e_2x2(tmp_path):
    out = tmp_path / "aot.json"
    proc = _aot("--config=configs/debug.py", "--topology=v5e:2x2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                "--config.train.batch_size=2", f"--out={out}")  # 2 rows: libtpu compiles 8 about 4x slower
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["topology_devices"] == 4 and r["mesh"]["fsdp"] == 2 and r["mesh"]["tensor"] == 2
    h = r["hbm_per_device"]
    assert h["total"] == h["arguments"] + h["outputs"] - h["aliased"] + h["temporaries"] + h["generated_code"]
    assert h["aliased"] > 0.9 * h["arguments"]  # the donated state is updated in place
    assert r["fits"] is True and h["capacity"] == 16 * 1024 ** 3
    assert r["flops_per_device"] > 0 and r["bytes_accessed_per_device"] > 0
    assert 0 < r["projected_mfu_xla"] <= 1
    assert r["projected_mfu_model"] is None or r["projected_mfu_model"] <= r["projected_mfu_xla"]
    assert r["collectives"]["all-gather"]["bytes"] > 0  # FSDP gathers weights
    assert "HBM per device" in proc.stdout and "projected MFU" in proc.stdout and "model formula" in proc.stdout


@pytest.mark.slow
def test_memory_only_reports_hbm_and_collectives_without_costs(tmp_path):
    out = tmp_path / "aot.json"
    proc = _aot("--config=configs/debug.py", "--topology=v5e:2x2", "--config.mesh.fsdp=4", "--memory_only",
                "--config.train.batch_size=4", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["fits"] and r["hbm_per_device"]["total"] > 0 and r["collectives"]["all-gather"]["count"] > 0
    assert r["flops_per_device"] is None and r["projected_step_seconds"] is None and r["projected_mfu_model"] is None
    assert "memory only" in proc.stdout and "MFU" not in proc.stdout


@pytest.mark.slow
def test_moe_tokens_travel_by_ragged_all_to_all_on_tpu(tmp_path):
    """debug_moe on v5p:2x2x1 (expert=2 x fsdp=2, 512 tokens a device sent 128 at a time): every
    dispatch and return is a ragged all-to-all of one round's A = 128 x 2 rows, counted at A rows
    (not the P x A receive buffer): 4 MoE layers (MTP's included) x 4 rounds x 6 (dispatch and
    return, again in the round's recompute, and their transposes); the dense all-to-alls left
    carry counts and offsets (and attention's head reshards), a few percent of the bytes."""
    out = tmp_path / "aot.json"
    proc = _aot("--config=configs/debug_moe.py", "--topology=v5p:2x2x1", "--config.mesh.expert=2",
                "--config.mesh.fsdp=2", "--config.train.batch_size=8", "--config.run.moe_dispatch_tokens=128",
                "--config.run.dtype=bfloat16", "--memory_only", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    ragged, dense = r["collectives"]["ragged-all-to-all"], r["collectives"]["all-to-all"]
    assert ragged == {"count": 4 * 4 * 6, "bytes": 4 * 4 * 6 * (128 * 2) * 256 * 2}
    assert dense["bytes"] < 0.1 * ragged["bytes"]
    assert r["all_to_all_bytes_per_device"] == ragged["bytes"] + dense["bytes"]


def test_unknown_topology_is_a_clear_error():
    proc = _aot("--config=configs/debug.py", "--topology=v9z:1x1", timeout=120)
    assert proc.returncode != 0
    assert "--topology='v9z:1x1' is not a TPU topology" in proc.stderr


def test_report_says_by_how_much_it_does_not_fit():
    from glm_jax.aot import GiB, format_report

    r = {"model": "m", "topology_devices": 4, "device_kind": "TPU v5 lite", "mesh": {}, "batch_size": 1, "seq_len": 8,
         "hbm_per_device": {"arguments": 10 * GiB, "outputs": 0, "aliased": 0, "temporaries": 8.5 * GiB,
                            "generated_code": 0, "total": 18.5 * GiB, "capacity": 16 * GiB},
         "fits": False, "flops_per_device": 1.0, "model_flops_per_device": 1.0, "xla_to_model_flops": 1.0,
         "bytes_accessed_per_device": 1.0, "xla_optimal_seconds": None,
         "roofline_seconds": {"compute": 1.0, "hbm": 0.5, "collectives": 0.1}, "roofline_step_seconds": 1.0,
         "projected_step_seconds": 1.0,
         "projected_mfu_xla": 0.5, "projected_mfu_model": None, "mfu_note": "x", "collectives": {}}
    assert "does not fit by 2.50 GiB" in format_report(r)


@pytest.mark.slow
def test_xla_counted_flops_of_the_debug_step_are_within_10_percent_of_the_model_formula():
    """The planner's per-step FLOPs (loop-free corners extrapolated; glm_jax.aot.step_costs),
    summed over devices, against 6 x matmul params + causal attention per token: reference and
    flash, on one v5e chip (2 rows: tests/aot_flops.py) and with the sequence split over 4
    (context parallelism). Reference attention computes the masked half too (+6% here), flash
    visits 3 of 4 blocks at T = 256. Measured once each (XLA / model): reference 1.086
    unsharded, 1.086 with sequence=4; flash 1.097 and 1.097 (flash recomputes QK^T and dP in both
    backward kernels: 9 block products where the model formula counts 6)."""
    proc = cli.run("-m", "tests.aot_flops", env=cli.tpu_env(), timeout=3600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {(r["attention"], r["topology"]) for r in rows} == {(a, t) for a in ("reference", "flash")
                                                             for t in ("v5e:1x1", "v5e:2x2")}
    for r in rows:
        assert abs(r["xla"] / r["model"] - 1) <= 0.10, r


def test_v7_names_resolve_to_ironwood_and_the_chip_table_knows_it():
    code = ("from glm_jax import accelerators, aot; d = aot.topology_devices('v7:2x2x1'); "
            "c = accelerators.lookup(d[0].device_kind); assert c; print(d[0].device_kind, len(d), c.devices_per_chip)")
    proc = cli.run("-c", code, env=cli.tpu_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, n, per_chip = proc.stdout.split()[-3:]
    assert kind == "TPU7x" and int(n) == 4 * int(per_chip)  # 2x2x1 chips, two TensorCore devices each


def test_a_mesh_axis_that_is_no_product_of_physical_axes_splits_one():
    """expert=32 x fsdp=2 on v5p:4x4x4 (GLM-4.5's experts on 64 chips): 32 is no product of whole
    4-chip axes, so a physical axis is split (jax.make_mesh alone refuses); each device once."""
    code = ("from glm_jax import aot, config, sharding; d = aot.topology_devices('v5p:4x4x4'); "
            "m = sharding.make_mesh(config.MeshConfig(data=1, fsdp=2, expert=32, tensor=1), d); "
            "assert sorted(x.id for x in m.devices.flat) == sorted(x.id for x in d); print(dict(m.shape))")
    proc = cli.run("-c", code, env=cli.tpu_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == str({"data": 1, "fsdp": 2, "expert": 32, "sequence": 1, "tensor": 1})


def test_collectives_sum_tuple_shapes_count_async_pairs_once_and_multiply_loops():
    from glm_jax.aot import collectives

    hlo = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = (f32[4]{0}, f32[4]{0}) all-gather-start(f32[2]{0} %a, f32[2]{0} %b), dimensions={0}
  %agd = (f32[4]{0}, f32[4]{0}) all-gather-done((f32[4]{0}, f32[4]{0}) %ag)
  ROOT %t = (s32[], f32[8]) tuple(%i, %x)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%rs_comp (x: f32[16]) -> f32[4] {
  ROOT %rs = f32[4]{0} reduce-scatter(f32[16]{0} %x), dimensions={0}, to_apply=%add
}

ENTRY %main (x: f32[16]) -> f32[4] {
  %w = (s32[], f32[8]) while((s32[], f32[8]) %init), condition=%cond, body=%body
  %ar = (f32[3]{0}, bf16[2]{0}) all-reduce(f32[3]{0} %y, bf16[2]{0} %z), to_apply=%add
  %s = ((f32[16]), f32[4], u32[]) async-start(f32[16]{0} %x), calls=%rs_comp
  ROOT %d = f32[4]{0} async-done(((f32[16]), f32[4], u32[]) %s), calls=%rs_comp
}
"""
    c = collectives(hlo)
    assert c["all-gather"] == {"count": 5, "bytes": 5 * 2 * 4 * 4}  # in the loop x 5; both outputs summed
    assert c["all-reduce"] == {"count": 1, "bytes": 3 * 4 + 2 * 2}  # variadic: the sum, not the max
    assert c["reduce-scatter"] == {"count": 1, "bytes": 4 * 4}  # one async pair, counted once


def test_collectives_in_a_libtpu_compiled_loop_count_once_per_iteration():
    """libtpu's HLO writes layouts on scalars (`s32[]{:T(128)} constant(7)`): the loop bound is still
    read, so a psum in a 7-step scan counts 7 times, its bytes 7 x one device's [16, 32] fp32."""
    code = """
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from glm_jax import aot
mesh = jax.sharding.Mesh(aot.topology_devices("v5e:2x2"), ("x",))
body = lambda c, w: (c + jnp.sum(jax.lax.psum(w, "x")), None)
f = jax.shard_map(lambda ws: jax.lax.scan(body, jnp.zeros(()), ws)[0], mesh=mesh, in_specs=P(None, "x"), out_specs=P())
ws = jax.ShapeDtypeStruct((7, 16, 128), jnp.float32, sharding=NamedSharding(mesh, P(None, "x")))
print(aot.collectives(jax.jit(f).lower(ws).compile().as_text()))
"""
    proc = cli.run("-c", code, env=cli.tpu_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == str({"all-reduce": {"count": 7, "bytes": 7 * 16 * 32 * 4}})


def test_extrapolation_counts_every_layer_of_every_micro_batch_and_the_optimizer_once():
    """Costs are fixed (optimizer) + per layer + per micro-batch x (embed/loss + per layer): the
    loop-free corners (1|2 layers x 1|2 micro-batches) give L = 40, A = 8 exactly."""
    from glm_jax.aot import _extrapolate

    def cost(n, a):  # optimizer 7, a layer's weights 3 (once), per micro-batch 11 + 5 per layer
        return 7 + 3 * n + a * (11 + 5 * n)

    corners = {(n, a): {"flops": cost(n, a), "bytes": 2 * cost(n, a), "seconds": None} for n in (1, 2) for a in (1, 2)}
    out = _extrapolate(corners, layers=40, micro=8)
    assert out["flops"] == cost(40, 8) and out["bytes"] == 2 * cost(40, 8) and out["seconds"] is None
    one = {k: v for k, v in corners.items() if k[1] == 1}
    assert _extrapolate(one, layers=40, micro=1)["flops"] == cost(40, 1)


@pytest.mark.slow
def test_moe_step_costs_count_the_experts_at_balanced_load():
    """debug_moe on v5p:2x2x1 (expert=2 x fsdp=2, 128 tokens a device sent 64 at a time): the
    planner's loop-free variants cost the routed experts at balanced load (each shard receives
    its average rows), not over the dropless worst-case buffer of P x A rows. XLA's count stays
    above the model formula by libtpu's count of ragged_dot's weight gradient, once per local
    expert (4 here): measured once 1.278; costed over the dropless buffers it was 1.851."""
    code = """
from glm_jax import aot, config
from glm_jax.train import metrics
cfg = config.load("configs/debug_moe.py", ["mesh.expert=2", "mesh.fsdp=2", "train.batch_size=4", "train.seq_len=128",
                  "run.moe_dispatch_tokens=64", "run.dtype=bfloat16"])
flops = aot.step_costs(cfg, aot.topology_devices("v5p:2x2x1"))["flops"]
print(flops * 4 / (metrics.train_flops_per_token(cfg.model, 128) * 4 * 128))
"""
    proc = cli.run("-c", code, env=cli.tpu_env(), timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 1.0 < float(proc.stdout.split()[-1]) < 1.4, proc.stdout


@pytest.mark.slow
def test_flash_and_splash_declare_their_block_sparse_costs_to_xla():
    """fwd+bwd of each kernel compiled for one v5e chip (B2 T1024 H8:2 E128, bf16, causal):
    XLA's FLOP count includes the kernels' declared costs (splash's through our wrapper; without
    it splash counts ~0). Measured once: expected 2.899e10, flash 2.900e10, splash 2.901e10."""
    code = """
import jax, jax.numpy as jnp
from glm_jax import aot
from glm_jax.kernels.flash_attention import attention_costs, flash_attention
from glm_jax.kernels.splash import splash_attention
sh = jax.sharding.SingleDeviceSharding(aot.topology_devices("v5e:1x1")[0])
B, T, H, K, E = 2, 1024, 8, 2, 128
q = jax.ShapeDtypeStruct((B, T, H, E), jnp.bfloat16, sharding=sh)
kv = jax.ShapeDtypeStruct((B, T, K, E), jnp.bfloat16, sharding=sh)
print("expected", sum(c.flops for c in attention_costs(B, H, K, T, T, E, 512, 512, 2, False).values()))
for name, kern in (("flash", flash_attention), ("splash", splash_attention)):
    loss = lambda q, k, v, kern=kern: kern(q, k, v, None, block_q=512, block_kv=512).astype(jnp.float32).sum()
    cost = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile().cost_analysis()
    print(name, (cost[0] if isinstance(cost, list) else cost)["flops"])
"""
    proc = cli.run("-c", code, env=cli.tpu_env(), timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(line.split() for line in proc.stdout.splitlines() if line.split()[0] in ("expected", "flash", "splash"))
    expected = float(got["expected"])
    for name in ("flash", "splash"):
        assert 1.0 <= float(got[name]) / expected <= 1.05, (name, got)
