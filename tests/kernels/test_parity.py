"""Both Pallas kernels compute what the XLA reference computes: forward and dq, dk, dv, for causal
attention, grouped-query heads (8:2 and a scaled-down 32:2, i.e. 16 heads per kv head), packed
segments (one crossing a block boundary), sequence lengths 128..2048, head dims 64 and 128,
fp32 and bf16. Our kernel runs in the TPU interpreter (`pltpu.InterpretParams()`), which simulates
VMEM and checks the DMAs and semaphores of the pipeline. Splash runs in the plain Pallas
interpreter: it is vmapped over the batch, and the TPU interpreter of jax 0.10.2 rejects a vmapped
pallas_call (the batch grid dim gets no dimension semantics)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from glm_jax.kernels.flash_attention import flash_attention
from glm_jax.kernels.splash import splash_attention
from glm_jax.model.attention import reference_attention

KERNELS = {"flash": flash_attention, "splash": splash_attention}
# Stated tolerances, relative to the largest reference magnitude: fp32 is accumulation-order noise;
# bf16 inputs round p and dS to bf16 before the matmuls (as every flash kernel does).
# Measured: fp32 <= 1.3e-6, bf16 <= 4.4e-3.
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def _segments(B, T, cuts):
    """[B, T] segment ids with documents starting at `cuts` (same for every row)."""
    return jnp.asarray(np.broadcast_to((np.arange(T)[:, None] >= np.asarray(cuts)[None]).sum(-1), (B, T)), jnp.int32)


def _inputs(B, T, H, K, E, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (B, T, H, E), jnp.float32)
    k = jax.random.normal(ks[1], (B, T, K, E), jnp.float32)
    v = jax.random.normal(ks[2], (B, T, K, E), jnp.float32)
    do = jax.random.normal(ks[3], (B, T, H, E), jnp.float32)
    return [x.astype(dtype) for x in (q, k, v, do)]


def _fwd_bwd(fn, q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(do))


def _assert_close(got, want, dtype, what):
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        err = np.abs(g - w).max() / np.abs(w).max()
        assert err <= TOL[dtype], f"{what}: {name} relative error {err:.2e} > {TOL[dtype]}"


CASES = [  # B, T, H, K, E, block, segment starts, dtype
    pytest.param(2, 128, 8, 2, 64, 128, None, jnp.float32, id="T128-gqa8:2-E64-causal"),
    pytest.param(1, 512, 4, 2, 64, 128, None, jnp.float32, id="T512-gqa4:2-E64-causal-multiblock"),
    pytest.param(1, 512, 8, 2, 128, 128, (0, 200, 300), jnp.float32, id="T512-gqa8:2-E128-packed"),
    pytest.param(1, 256, 16, 1, 128, 128, (0, 77, 129), jnp.float32, id="T256-gqa16:1(32:2)-E128-packed"),
    pytest.param(1, 2048, 2, 1, 64, 512, (0, 1000, 1500), jnp.float32, id="T2048-gqa2:1-E64-packed"),
    pytest.param(1, 512, 8, 2, 128, 128, (0, 200, 300), jnp.bfloat16, id="T512-gqa8:2-E128-packed-bf16"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("B,T,H,K,E,block,cuts,dtype", CASES)
def test_kernel_matches_reference(kernel, B, T, H, K, E, block, cuts, dtype):
    q, k, v, do = _inputs(B, T, H, K, E, dtype)
    seg = None if cuts is None else _segments(B, T, cuts)
    fn = functools.partial(KERNELS[kernel], segment_ids=seg, block_q=block, block_kv=block,
                           interpret=pltpu.InterpretParams() if kernel == "flash" else True)
    got = jax.jit(functools.partial(_fwd_bwd, fn))(q, k, v, do)
    want = _fwd_bwd(lambda q, k, v: reference_attention(q, k, v, seg), *(x.astype(jnp.float32) for x in (q, k, v)),
                    do.astype(jnp.float32))
    _assert_close(got, want, dtype, kernel)


def test_flash_queries_at_an_offset_into_longer_keys():
    """Context parallelism's building block: T queries at positions q_offset.. against S keys
    (a traced offset, as from axis_index) equal the matching rows of full attention."""
    B, S, T, H, K, E = 1, 512, 256, 4, 2, 64
    q, k, v, do = _inputs(B, S, H, K, E, jnp.float32, seed=1)
    seg = _segments(B, S, (0, 200, 300))
    off = 256
    fn = lambda q, k, v, o: flash_attention(q, k, v, seg[:, off:off + T], kv_segment_ids=seg, q_offset=o,
                                            block_q=128, block_kv=128, interpret=pltpu.InterpretParams())
    got = jax.jit(lambda q, k, v, do, o: _fwd_bwd(lambda q, k, v: fn(q, k, v, o), q, k, v, do))(
        q[:, off:off + T], k, v, do[:, off:off + T], jnp.int32(off))
    full = lambda q, k, v: reference_attention(q, k, v, seg)[:, off:off + T]
    want = _fwd_bwd(lambda qs, k, v: full(q.at[:, off:off + T].set(qs), k, v), q[:, off:off + T], k, v,
                    do[:, off:off + T])
    _assert_close(got, want, jnp.float32, "flash q_offset")


@pytest.mark.parametrize("kernel,block,field", [("flash", 96, "attention_block_q"),
                                                ("splash", 96, "attention_block_q"),
                                                ("splash", 64, "attention_block_q")])
def test_bad_block_size_names_the_config_field(kernel, block, field):
    q, k, v, _ = _inputs(1, 256, 2, 1, 64, jnp.float32)
    with pytest.raises(ValueError, match=f"run.{field}"):
        KERNELS[kernel](q, k, v, block_q=block, block_kv=128, interpret=True)
