"""GLM building blocks as pure functions: RMSNorm, partial interleaved rotary, SwiGLU MLP.

Letters: B batch, T sequence, D hidden, N any head count, E head dim, R rotary dims, F ffn.
RMSNorm and rotary compute in fp32 and return the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x [..., D], scale [D] -> [..., D] in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rotary_tables(positions: jax.Array, rotary_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions [B, T] int -> (cos, sin), each [B, T, R/2] fp32.

    Frequencies are theta^(-2i/R) for i < R/2, as in GLM (`rope_ratio` scales theta)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, N, E]; cos/sin [B, T, R/2]. Rotates the first R dims of each head as interleaved
    pairs (2i, 2i+1) (GPT-J style, as GLM does); dims R..E pass through."""
    rot = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rot].astype(jnp.float32), x[..., rot:]
    pairs = x_rot.reshape(*x_rot.shape[:-1], rot // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1).reshape(x_rot.shape)
    return jnp.concatenate([out.astype(x.dtype), x_pass], axis=-1)


def apply_rotary_half(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, N, E]; cos/sin [B, T, R/2]. Rotates the first R dims of each head with the pairs
    (i, i + R/2) (GPT-NeoX "rotate half", as transformers' Glm4Moe does); dims R..E pass through."""
    rot = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rot].astype(jnp.float32), x[..., rot:]
    x0, x1 = x_rot[..., : rot // 2], x_rot[..., rot // 2:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)
    return jnp.concatenate([out.astype(x.dtype), x_pass], axis=-1)


def rotary(style: str):
    """The rotary function of ModelConfig.rotary_style: "interleaved" (GLM-4) or "half" (GLM-4.5)."""
    return {"interleaved": apply_rotary, "half": apply_rotary_half}[style]


def swiglu_mlp(x: jax.Array, wi: jax.Array, wo: jax.Array) -> jax.Array:
    """x [B, T, D], wi [D, 2, F] (gate, up), wo [F, D] -> [B, T, D]: wo(silu(gate x) * up x).

    The backward pass (custom VJP, the same numbers as autodiff's) keeps x and h = x wi
    [B, T, 2, F] and writes dwi as x^T dh, so it comes out in wi's own layout. Autodiff computes
    dh^T x and transposes it: XLA:CPU then copies dh [B x T, 2F] and dwi into transposed
    layouts every layer (its GEMMs take no transpose flags), and keeps more [L, B, T, F]
    residual stacks under the layer scan."""
    return _swiglu(x, wi.astype(x.dtype), wo.astype(x.dtype))


def _swiglu_fwd(x, wi, wo):
    h = jnp.einsum("btd,dcf->btcf", x, wi)
    return jnp.einsum("btf,fd->btd", jax.nn.silu(h[:, :, 0]) * h[:, :, 1], wo), (x, wi, wo, h)


@jax.custom_vjp
def _swiglu(x, wi, wo):
    return _swiglu_fwd(x, wi, wo)[0]


def _swiglu_bwd(res, dy):
    x, wi, wo, h = res
    gate, up = h[:, :, 0], h[:, :, 1]
    sig = jax.nn.sigmoid(gate)
    act = gate * sig  # silu(gate)
    dwo = jnp.einsum("btd,btf->df", dy, act * up).T
    d_act = jnp.einsum("btd,fd->btf", dy, wo)
    dh = jnp.stack([d_act * up * (sig * (1 + gate * (1 - sig))), d_act * act], axis=2)  # silu' = s(1 + g(1 - s))
    dwi = jnp.einsum("btd,btcf->dcf", x, dh)
    dx = jnp.einsum("btcf,dcf->btd", dh, wi)
    return dx, dwi, dwo


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
