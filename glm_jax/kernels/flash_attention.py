"""Our Pallas TPU flash attention: causal, grouped-query, packed segments; forward + backward.

    flash_attention(q [B, T, H, E], k/v [B, S, K, E], segment_ids [B, T] | None, ...) -> [B, T, H, E]

Key s is visible to query t iff s <= t + q_offset and (with segment ids) both carry the same
segment id. `q_offset` (default 0; a Python int or an int32 scalar, e.g. from `axis_index`) lets a
shard hold the queries of positions q_offset..q_offset+T-1 against a longer K/V (S >= T), which is
what context parallelism needs; `kv_segment_ids` [B, S] default to `segment_ids` when S == T.

How it works (FlashAttention-2): the forward streams K/V blocks through VMEM with an online
softmax in fp32 and returns the log-sum-exp per query as the residual; the backward recomputes
the probabilities block by block in two kernels, one accumulating dq over kv blocks and one
accumulating dk/dv over (query heads of the group, q blocks), so K/V are never repeated in HBM
and dk/dv need no extra reduction. Each kv head serves its G = H / K query heads through the
index maps. Blocks above the causal diagonal are skipped: no compute (`pl.when`) and no DMA
(the index map clamps to the last needed block, and Pallas does not re-fetch an unchanged block).

Letters: B batch, T query length, S key length, H query heads, K kv heads, G heads per kv group,
E head dim. Kernels work on a head-major layout [B, H, T, E]; per-query fp32 vectors (lse, delta,
segment ids) are stored as rows [B, (H,) 1, T] so they cost O(T) memory.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# Finite "minus infinity": keeps exp() and max() NaN-free on fully masked rows.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_LANES = 128


def _check_blocks(T: int, S: int, block_q: int, block_kv: int, interpret: Any) -> tuple[int, int]:
    """Block sizes clipped to the lengths; raises ValueError naming the config field otherwise."""
    bq, bkv = min(block_q, T), min(block_kv, S)
    for name, b, n in (("run.attention_block_q", bq, T), ("run.attention_block_kv", bkv, S)):
        if n % b:
            valid = [d for d in (128, 256, 512, 1024, 2048) if n % d == 0] or [n]
            raise ValueError(f"config field `{name}`: block {b} does not divide the sequence length {n}; "
                             f"use a divisor of {n}, e.g. one of {valid}")
        if not interpret and b != n and b % _LANES:
            raise ValueError(f"config field `{name}`: on TPU a block must be a multiple of {_LANES} "
                             f"(or the whole sequence length {n}), got {b}")
    return bq, bkv


def _last_kv_block(off, i, bq: int, bkv: int):
    """Index of the last kv block that query block i (rows off + i*bq ...) can see."""
    return jax.lax.div(jnp.maximum(off + (i + 1) * bq - 1, 0), jnp.int32(bkv))  # lax.div: no sign op on TPU


def _first_q_block(off, j, bq: int, bkv: int):
    """Index of the first query block that can see kv block j."""
    return jax.lax.div(jnp.maximum(j * bkv - off, 0), jnp.int32(bq))


def _mask(off, i, j, bq: int, bkv: int, qseg, kvseg, transposed: bool = False):
    """Visibility of a [bq, bkv] block (or [bkv, bq] when transposed); qseg/kvseg already oriented."""
    shape = (bkv, bq) if transposed else (bq, bkv)
    q_dim, kv_dim = (1, 0) if transposed else (0, 1)
    rows = off + i * bq + jax.lax.broadcasted_iota(jnp.int32, shape, q_dim)
    cols = j * bkv + jax.lax.broadcasted_iota(jnp.int32, shape, kv_dim)
    visible = cols <= rows
    if qseg is not None:
        visible = visible & (qseg == kvseg)
    return visible


def _run_block(body, off, i, j, bq: int, bkv: int, segmented: bool):
    """Runs body(masked) for a visited block: blocks wholly below the causal diagonal skip the
    mask arithmetic (most blocks of a long sequence) unless segment ids need it anyway."""
    if segmented:
        body(True)
        return
    crosses = j * bkv + bkv - 1 > off + i * bq  # its last key is later than its first query
    pl.when(crosses)(lambda: body(True))
    pl.when(jnp.logical_not(crosses))(lambda: body(False))


def _visible_pairs(T: int, S: int, bq: int, bkv: int, off: int = 0) -> int:
    """Block pairs (q block, kv block) the causal kernels visit for queries at off..off+T-1."""
    nk = S // bkv
    return sum(min(nk, (off + (i + 1) * bq - 1) // bkv + 1) for i in range(T // bq))


def visited_pairs(T: int, S: int, bq: int, bkv: int, q_offset: int | None) -> float:
    """Pairs visited per (batch row, query head). `q_offset=None` stands for a traced offset
    (context parallelism, from `axis_index`), unknown at trace time: count the mean of the placements 0 and S - T, which is
    exact for context parallelism's front/back chunk pair (the count is linear in a block-aligned
    offset, and each shard's two offsets average to (S - T) / 2)."""
    if q_offset is not None:
        return _visible_pairs(T, S, bq, bkv, q_offset)
    return (_visible_pairs(T, S, bq, bkv, 0) + _visible_pairs(T, S, bq, bkv, S - T)) / 2  # rounded by the caller


def attention_costs(B: int, H: int, K: int, T: int, S: int, E: int, bq: int, bkv: int, itemsize: int,
                    segmented: bool, q_offset: int | None = 0) -> dict[str, pl.CostEstimate]:
    """What XLA's cost model should charge each causal block-sparse kernel ("fwd", "dq", "dkv").

    FLOPs: 2 x bq x bkv x E per [bq, bkv, E] product on every visited pair: forward 2 products
    (QK^T, PV), dq 3 (QK^T, dP, dQ), dk/dv 4 (QK^T, dP, dV, dK). Bytes: the operand held
    across the inner grid axis is read once; the streamed one is re-read for every visited pair
    (K/V per query block in fwd and dq; Q, dO, lse and delta per kv block in dk/dv)."""
    pairs = B * H * visited_pairs(T, S, bq, bkv, q_offset)
    q_bytes, kv_bytes, rows = B * H * T * E * itemsize, B * K * S * E * itemsize, B * H * T * 4
    seg_q, seg_kv = (4 * pairs * bq, 4 * pairs * bkv) if segmented else (0, 0)
    kv_streamed = 2 * pairs * bkv * E * itemsize
    q_streamed = 2 * pairs * bq * E * itemsize + 2 * 4 * pairs * bq

    def est(matmuls, nbytes):
        return pl.CostEstimate(flops=int(2 * matmuls * pairs * bq * bkv * E), transcendentals=int(pairs * bq * bkv),
                               bytes_accessed=int(nbytes))

    return {"fwd": est(2, 2 * q_bytes + rows + kv_streamed + seg_kv),  # q in, o and lse out
            "dq": est(3, 3 * q_bytes + 2 * rows + kv_streamed + seg_kv),  # q, dO, lse, delta in, dq out
            "dkv": est(4, 4 * kv_bytes + q_streamed + seg_q)}  # k, v in, dk, dv out


def _as_column(row_ref):
    """A [1, n] VMEM row as an [n, 1] column (segment ids, lse, delta)."""
    return row_ref[0][:, None]


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

def _fwd_kernel(off_ref, q_ref, k_ref, v_ref, *rest, scale: float, bq: int, bkv: int, nk: int, segmented: bool):
    if segmented:
        qseg_ref, kvseg_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = rest
    else:
        o_ref, lse_ref, m_sc, l_sc, acc_sc = rest
    i, j = pl.program_id(2), pl.program_id(3)
    off = off_ref[0]

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    def body(masked: bool):
        q, k, v = q_ref[...], k_ref[...], v_ref[...]
        s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
        if masked:
            qseg = _as_column(qseg_ref) if segmented else None
            kvseg = kvseg_ref[...] if segmented else None
            visible = _mask(off, i, j, bq, bkv, qseg, kvseg)
            s = jnp.where(visible, s, _MASK_VALUE)
        m_prev = m_sc[...][:, :1]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        p = jnp.exp(s - m_new)
        if masked:
            p = jnp.where(visible, p, 0.0)
        alpha = jnp.exp(m_prev - m_new)
        l_new = alpha * l_sc[...][:, :1] + jnp.sum(p, axis=1, keepdims=True)
        acc_sc[...] = alpha * acc_sc[...] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        m_sc[...] = jnp.broadcast_to(m_new, m_sc.shape)
        l_sc[...] = jnp.broadcast_to(l_new, l_sc.shape)

    @pl.when(j <= _last_kv_block(off, i, bq, bkv))
    def _compute():
        _run_block(body, off, i, j, bq, bkv, segmented)

    @pl.when(j == nk - 1)
    def _finish():
        l = l_sc[...][:, :1]
        seen = l > 0.0  # a query that sees no key (never the case when S == T) outputs 0
        o_ref[...] = (acc_sc[...] / jnp.where(seen, l, 1.0)).astype(o_ref.dtype)
        lse = jnp.where(seen, m_sc[...] + jnp.log(jnp.where(seen, l_sc[...], 1.0)), jnp.inf)  # [bq, 128]
        lse_ref[...] = lse.T[:1, :]


def _forward(q, k, v, qseg, kvseg, off, *, bq, bkv, interpret, cost_offset):
    """Head-major q [B, H, T, E], k/v [B, K, S, E] -> (o [B, H, T, E], lse [B, H, 1, T] fp32)."""
    B, H, T, E = q.shape
    K, S = k.shape[1], k.shape[2]
    G, nq, nk = H // K, T // bq, S // bkv
    segmented = qseg is not None

    def kv_map(b, h, i, j, off_ref):
        return b, jax.lax.div(h, G), jnp.minimum(j, _last_kv_block(off_ref[0], i, bq, bkv)).clip(0, nk - 1), 0

    def kvseg_map(b, h, i, j, off_ref):
        return b, 0, jnp.minimum(j, _last_kv_block(off_ref[0], i, bq, bkv)).clip(0, nk - 1)

    in_specs = [pl.BlockSpec((None, None, bq, E), lambda b, h, i, j, o: (b, h, i, 0)),
                pl.BlockSpec((None, None, bkv, E), kv_map),
                pl.BlockSpec((None, None, bkv, E), kv_map)]
    args = [q, k, v]
    if segmented:
        in_specs += [pl.BlockSpec((None, 1, bq), lambda b, h, i, j, o: (b, 0, i)),
                     pl.BlockSpec((None, 1, bkv), kvseg_map)]
        args += [qseg, kvseg]
    kernel = functools.partial(_fwd_kernel, scale=1.0 / math.sqrt(E), bq=bq, bkv=bkv, nk=nk, segmented=segmented)
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(B, H, nq, nk),
            in_specs=in_specs,
            out_specs=[pl.BlockSpec((None, None, bq, E), lambda b, h, i, j, o: (b, h, i, 0)),
                       pl.BlockSpec((None, None, 1, bq), lambda b, h, i, j, o: (b, h, 0, i))],
            scratch_shapes=[pltpu.VMEM((bq, _LANES), jnp.float32), pltpu.VMEM((bq, _LANES), jnp.float32),
                            pltpu.VMEM((bq, E), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct((B, H, T, E), q.dtype), jax.ShapeDtypeStruct((B, H, 1, T), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        cost_estimate=attention_costs(B, H, K, T, S, E, bq, bkv, q.dtype.itemsize, segmented, cost_offset)["fwd"],
        name="glm_flash_fwd",
    )(off, *args)


# ---------------------------------------------------------------------------------------------
# Backward: dq (accumulated over kv blocks) and dk/dv (accumulated over the group's heads and q blocks)
# ---------------------------------------------------------------------------------------------

def _dq_kernel(off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest, scale, bq, bkv, nk, segmented):
    if segmented:
        qseg_ref, kvseg_ref, dq_ref, dq_sc = rest
    else:
        dq_ref, dq_sc = rest
    i, j = pl.program_id(2), pl.program_id(3)
    off = off_ref[0]

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    def body(masked: bool):
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        nt = (((1,), (1,)), ((), ()))
        s = jax.lax.dot_general(q, k, nt, preferred_element_type=jnp.float32) * scale
        p = jnp.exp(s - _as_column(lse_ref))
        if masked:
            qseg = _as_column(qseg_ref) if segmented else None
            kvseg = kvseg_ref[...] if segmented else None
            p = jnp.where(_mask(off, i, j, bq, bkv, qseg, kvseg), p, 0.0)
        dp = jax.lax.dot_general(do, v, nt, preferred_element_type=jnp.float32)
        ds = p * (dp - _as_column(delta_ref))
        dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    @pl.when(j <= _last_kv_block(off, i, bq, bkv))
    def _compute():
        _run_block(body, off, i, j, bq, bkv, segmented)

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest, scale, bq, bkv, G, nq, segmented):
    if segmented:
        qseg_ref, kvseg_ref, dk_ref, dv_ref, dk_sc, dv_sc = rest
    else:
        dk_ref, dv_ref, dk_sc, dv_sc = rest
    j, g, i = pl.program_id(2), pl.program_id(3), pl.program_id(4)
    off = off_ref[0]

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    def body(masked: bool):
        # Transposed frame: [bkv, bq] blocks, so per-query rows (lse, delta, q segment) broadcast
        # over sublanes and every matmul is a plain or NT product.
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        nt = (((1,), (1,)), ((), ()))
        st = jax.lax.dot_general(k, q, nt, preferred_element_type=jnp.float32) * scale
        pt = jnp.exp(st - lse_ref[...])
        if masked:
            qseg = qseg_ref[...] if segmented else None
            kvseg = _as_column(kvseg_ref) if segmented else None
            pt = jnp.where(_mask(off, i, j, bq, bkv, qseg, kvseg, transposed=True), pt, 0.0)
        dv_sc[...] += jnp.dot(pt.astype(do.dtype), do, preferred_element_type=jnp.float32)
        dpt = jax.lax.dot_general(v, do, nt, preferred_element_type=jnp.float32)
        dst = pt * (dpt - delta_ref[...])
        dk_sc[...] += jnp.dot(dst.astype(q.dtype), q, preferred_element_type=jnp.float32)

    @pl.when(i >= _first_q_block(off, j, bq, bkv))
    def _compute():
        _run_block(body, off, i, j, bq, bkv, segmented)

    @pl.when((g == G - 1) & (i == nq - 1))
    def _finish():
        dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _backward(q, k, v, qseg, kvseg, off, o, lse, do, *, bq, bkv, interpret, cost_offset):
    B, H, T, E = q.shape
    K, S = k.shape[1], k.shape[2]
    G, nq, nk = H // K, T // bq, S // bkv
    segmented = qseg is not None
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)[:, :, None, :]  # [B, H, 1, T]
    scale = 1.0 / math.sqrt(E)
    sem = ("parallel", "parallel", "parallel", "arbitrary")

    # dq: grid (B, H, nq, nk)
    def kv_map(b, h, i, j, o_):
        return b, jax.lax.div(h, G), jnp.minimum(j, _last_kv_block(o_[0], i, bq, bkv)).clip(0, nk - 1), 0

    def kvseg_map(b, h, i, j, o_):
        return b, 0, jnp.minimum(j, _last_kv_block(o_[0], i, bq, bkv)).clip(0, nk - 1)

    q_spec = pl.BlockSpec((None, None, bq, E), lambda b, h, i, j, o_: (b, h, i, 0))
    row_spec = pl.BlockSpec((None, None, 1, bq), lambda b, h, i, j, o_: (b, h, 0, i))
    in_specs = [q_spec, pl.BlockSpec((None, None, bkv, E), kv_map), pl.BlockSpec((None, None, bkv, E), kv_map),
                q_spec, row_spec, row_spec]
    args = [q, k, v, do, lse, delta]
    if segmented:
        in_specs += [pl.BlockSpec((None, 1, bq), lambda b, h, i, j, o_: (b, 0, i)),
                     pl.BlockSpec((None, 1, bkv), kvseg_map)]
        args += [qseg, kvseg]
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, bq=bq, bkv=bkv, nk=nk, segmented=segmented),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(B, H, nq, nk), in_specs=in_specs, out_specs=q_spec,
            scratch_shapes=[pltpu.VMEM((bq, E), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=sem),
        interpret=interpret,
        cost_estimate=attention_costs(B, H, K, T, S, E, bq, bkv, q.dtype.itemsize, segmented, cost_offset)["dq"],
        name="glm_flash_dq",
    )(off, *args)

    # dk/dv: grid (B, K, nk, G, nq); the (G, nq) steps of one kv block accumulate in VMEM.
    def q_map(b, kh, j, g, i, o_):
        return b, kh * G + g, jnp.maximum(i, _first_q_block(o_[0], j, bq, bkv)).clip(0, nq - 1), 0

    def qrow_map(b, kh, j, g, i, o_):
        return b, kh * G + g, 0, jnp.maximum(i, _first_q_block(o_[0], j, bq, bkv)).clip(0, nq - 1)

    def qseg_map(b, kh, j, g, i, o_):
        return b, 0, jnp.maximum(i, _first_q_block(o_[0], j, bq, bkv)).clip(0, nq - 1)

    kv_spec = pl.BlockSpec((None, None, bkv, E), lambda b, kh, j, g, i, o_: (b, kh, j, 0))
    qb_spec = pl.BlockSpec((None, None, bq, E), q_map)
    row_spec = pl.BlockSpec((None, None, 1, bq), qrow_map)
    in_specs = [qb_spec, kv_spec, kv_spec, qb_spec, row_spec, row_spec]
    if segmented:
        in_specs += [pl.BlockSpec((None, 1, bq), qseg_map),
                     pl.BlockSpec((None, 1, bkv), lambda b, kh, j, g, i, o_: (b, 0, j))]
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, bq=bq, bkv=bkv, G=G, nq=nq, segmented=segmented),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(B, K, nk, G, nq), in_specs=in_specs, out_specs=[kv_spec, kv_spec],
            scratch_shapes=[pltpu.VMEM((bkv, E), jnp.float32), pltpu.VMEM((bkv, E), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel",
                                                                  "arbitrary", "arbitrary")),
        interpret=interpret,
        cost_estimate=attention_costs(B, H, K, T, S, E, bq, bkv, q.dtype.itemsize, segmented, cost_offset)["dkv"],
        name="glm_flash_dkv",
    )(off, *args)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# custom_vjp in the head-major layout, and the public entry point in the model's layout
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _flash_hm(q, k, v, qseg, kvseg, off, bq, bkv, interpret, cost_offset):
    return _forward(q, k, v, qseg, kvseg, off, bq=bq, bkv=bkv, interpret=interpret, cost_offset=cost_offset)[0]


def _flash_hm_fwd(q, k, v, qseg, kvseg, off, bq, bkv, interpret, cost_offset):
    o, lse = _forward(q, k, v, qseg, kvseg, off, bq=bq, bkv=bkv, interpret=interpret, cost_offset=cost_offset)
    return o, (q, k, v, qseg, kvseg, off, o, lse)


def _flash_hm_bwd(bq, bkv, interpret, cost_offset, res, do):
    q, k, v, qseg, kvseg, off, o, lse = res
    dq, dk, dv = _backward(q, k, v, qseg, kvseg, off, o, lse, do, bq=bq, bkv=bkv, interpret=interpret,
                           cost_offset=cost_offset)
    return dq, dk, dv, None, None, None


_flash_hm.defvjp(_flash_hm_fwd, _flash_hm_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None = None, *,
                    kv_segment_ids: jax.Array | None = None, q_offset: int | jax.Array = 0,
                    block_q: int = 512, block_kv: int = 512, interpret: Any = False) -> jax.Array:
    """q [B, T, H, E], k/v [B, S, K, E], segment_ids [B, T] | None -> [B, T, H, E] in q's dtype.

    Causal (key s visible to query t iff s <= t + q_offset) within equal segment ids; H must be a
    multiple of K. `interpret`: False on TPU; True or `pltpu.InterpretParams()` elsewhere.
    Differentiable in q, k, v (fp32 accumulation; dq/dk/dv in the inputs' dtypes)."""
    B, T, H, E = q.shape
    S, K = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != E:
        raise ValueError(f"flash_attention: k {k.shape} and v {v.shape} must be [B={B}, S, K, E={E}]")
    if H % K:
        raise ValueError(f"flash_attention: {H} query heads are not a multiple of {K} kv heads")
    if isinstance(q_offset, int) and (q_offset < 0 or T + q_offset > S):
        raise ValueError(f"flash_attention: q_offset={q_offset} must place the {T} queries inside the {S} keys")
    bq, bkv = _check_blocks(T, S, block_q, block_kv, interpret)
    qseg = kvseg = None
    if segment_ids is not None:
        if kv_segment_ids is None:
            if S != T:
                raise ValueError("flash_attention: pass kv_segment_ids [B, S] when S != T")
            kv_segment_ids = segment_ids
        qseg = segment_ids.astype(jnp.int32)[:, None, :]
        kvseg = kv_segment_ids.astype(jnp.int32)[:, None, :]
    off = jnp.asarray(q_offset, jnp.int32).reshape(1)
    hm = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, N, E] <-> [B, N, T, E]
    cost_offset = q_offset if isinstance(q_offset, int) else None  # a traced offset: see visited_pairs
    out = _flash_hm(hm(q), hm(k), hm(v), qseg, kvseg, off, bq, bkv, interpret, cost_offset)
    return hm(out)
