"""Compiles the kernels (attention, MoE grouped matmul) and the debug model's training step for a
TPU topology, without a TPU.

    python -m tests.kernels.tpu_compile v5e:2x2 [--kernels-only]   # one JSON line per compiled program

Run in its own process by tests/kernels/test_tpu_compile.py: it loads libtpu next to the CPU
backend. Mosaic compiles each kernel for the topology's chip, which checks VMEM use and layouts."""

import json
import os
import sys

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from glm_jax import aot, config  # noqa: E402
from glm_jax.kernels.flash_attention import flash_attention  # noqa: E402
from glm_jax.kernels.grouped_matmul import grouped_matmul  # noqa: E402
from glm_jax.kernels.splash import splash_attention  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _report(what, compiled):
    mem = compiled.memory_analysis()
    print(json.dumps({"what": what, "temp_bytes": int(mem.temp_size_in_bytes),
                      "argument_bytes": int(mem.argument_size_in_bytes)}), flush=True)


def compile_kernels(device):
    """fwd+bwd of each kernel on one chip, bf16: GLM-4-9B heads (32:2, E=128) with packed segments,
    and 8:2 heads with E=64 unpacked (causal only)."""
    sh = jax.sharding.SingleDeviceSharding(device)
    for name, kernel in (("flash", flash_attention), ("splash", splash_attention)):
        for B, T, H, K, E, packed in ((1, 2048, 32, 2, 128, True), (2, 1024, 8, 2, 64, False)):
            q = jax.ShapeDtypeStruct((B, T, H, E), jnp.bfloat16, sharding=sh)
            kv = jax.ShapeDtypeStruct((B, T, K, E), jnp.bfloat16, sharding=sh)
            seg = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=sh) if packed else None

            def loss(q, k, v, s, kernel=kernel):
                return kernel(q, k, v, s, block_q=512, block_kv=512).astype(jnp.float32).sum()

            f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            _report(f"{name} fwd+bwd B{B} T{T} H{H} K{K} E{E}{' packed' if packed else ''}",
                    f.lower(q, kv, kv, seg).compile())


def compile_grouped_matmul(device):
    """fwd+bwd of megablox's grouped matmul on one chip, bf16, at GLM-4.5-Air's expert shapes: 8
    local experts, D = 4096, expert ffn 1,408 (not a multiple of the 512 tile), 4,000 rows (padded
    to the 128-row tile), the SwiGLU's two matmuls."""
    sh = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((4000, 4096), jnp.bfloat16, sharding=sh)
    wi = jax.ShapeDtypeStruct((8, 4096, 2 * 1408), jnp.bfloat16, sharding=sh)
    wo = jax.ShapeDtypeStruct((8, 1408, 4096), jnp.bfloat16, sharding=sh)
    sizes = jax.ShapeDtypeStruct((8,), jnp.int32, sharding=sh)

    def loss(x, wi, wo, sizes):
        h = grouped_matmul(x, wi, sizes, "megablox").reshape(-1, 2, 1408)
        return grouped_matmul(jax.nn.silu(h[:, 0]) * h[:, 1], wo, sizes, "megablox").astype(jnp.float32).sum()

    with jax.set_mesh(jax.sharding.Mesh([device], ("fsdp",))):  # the target (TPU) picks Mosaic, not the interpreter
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, wi, wo, sizes).compile()
    assert "tpu_custom_call" in compiled.as_text(), "megablox: no Mosaic kernel in the compiled program"
    _report("megablox gmm fwd+bwd M4000 D4096 C1408 X8", compiled)


def compile_train_steps(devices):
    """The debug model's real train step (glm_jax.aot: donating, sharded, AdamW) with each Pallas
    backend on a (fsdp, tensor) mesh of the topology (the reference backend's step compiles for the
    same mesh through the CLI in tests/test_aot.py)."""
    # two rows (not 8): libtpu's compile time grows with the tokens; the kernels' tiling does not
    cfg = config.load(os.path.join(REPO, "configs", "debug.py"), ["mesh.tensor=2", "train.batch_size=2"])
    for backend in ("flash", "splash"):
        compiled, _ = aot.compile_train_step(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, attention=backend)),
                                             list(devices))
        # the kernels must be Mosaic custom calls, not the interpreter
        assert "tpu_custom_call" in compiled.as_text(), f"{backend}: no Mosaic kernel in the compiled step"
        _report(f"train step {backend}", compiled)


if __name__ == "__main__":
    topo = topologies.get_topology_desc(topology_name=sys.argv[1], platform="tpu")
    compile_kernels(topo.devices[0])
    compile_grouped_matmul(topo.devices[0])
    if "--kernels-only" not in sys.argv[2:]:
        compile_train_steps(topo.devices)
