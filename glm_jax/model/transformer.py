"""GLM-4 forward pass: embed -> L x (pre-norm attention, pre-norm SwiGLU) -> final norm -> output.

With `cfg.post_norms` (GLM-4-0414) each sublayer's output is RMS-normed again before its residual
add: x + norm(attn(norm(x))), then x + norm(mlp(norm(x))) (transformers' Glm4: post_self_attn_layernorm,
post_mlp_layernorm).

    forward(params, tokens, cfg, positions=None, segment_ids=None) -> logits [B, T, V] fp32

Letters: B batch, T sequence, D hidden, H heads, K kv heads, E head dim, F ffn, V vocab.
The stacked layers run under `lax.scan` (or a Python loop with `cfg.scan_layers=False`: same
numbers, longer compile). `cfg.remat` picks what the backward pass recomputes; block outputs
are tagged with `checkpoint_name` ("attn_out", "mlp_out") for the named policy.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from glm_jax.config import ModelConfig
from glm_jax.kernels import context_parallel
from glm_jax.model.attention import attention
from glm_jax.model.layers import apply_rotary, rms_norm, rotary_tables, swiglu_mlp
from glm_jax.sharding import constrain, embed_lookup

_ACT = ("batch", "seq", None)  # activations [B, T, D]


def _remat_policy(name: str):
    return {
        "full": None,  # save nothing: recompute the whole block
        "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "save_attn_mlp_out": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
    }[name]


def block(x: jax.Array, layer: dict, cos: jax.Array, sin: jax.Array, attend: Callable, cfg: ModelConfig):
    """One GLM layer. x [B, T, D]; `layer` is one slice of params["layers"] (no L axis).

    `attend(q [B,T,H,E], k [B,T,K,E], v [B,T,K,E]) -> (out [B,T,H,E], aux)` does the attention
    (training: the attention backend over the segment mask; decoding: against a KV cache, with
    the updated cache as `aux`). Returns (x, aux)."""
    dt = x.dtype
    with jax.named_scope("attention"):
        h = rms_norm(x, layer["attn_norm"]["scale"], cfg.rms_norm_eps)
        attn = layer["attn"]

        def proj(p, axes):
            y = jnp.einsum("btd,dne->btne", h, p["kernel"].astype(dt))
            if "bias" in p:
                y = y + p["bias"].astype(dt)
            return constrain(y, ("batch", "seq", axes, "head_dim"))

        q, k, v = proj(attn["q"], "heads"), proj(attn["k"], "kv_heads"), proj(attn["v"], "kv_heads")
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        a, aux = attend(q, k, v)
        a = constrain(a, ("batch", "seq", "heads", "head_dim"))
        out = jnp.einsum("bthe,hed->btd", a, attn["o"]["kernel"].astype(dt))
        if cfg.post_norms:  # GLM-4-0414: normalize the sublayer's output before the residual add
            out = rms_norm(out, layer["attn_post_norm"]["scale"], cfg.rms_norm_eps)
        x = x + checkpoint_name(constrain(out, _ACT), "attn_out")
    with jax.named_scope("mlp"):
        h = rms_norm(x, layer["mlp_norm"]["scale"], cfg.rms_norm_eps)
        out = swiglu_mlp(h, layer["mlp"]["wi"]["kernel"], layer["mlp"]["wo"]["kernel"])
        if cfg.post_norms:
            out = rms_norm(out, layer["mlp_post_norm"]["scale"], cfg.rms_norm_eps)
        x = x + checkpoint_name(constrain(out, _ACT), "mlp_out")
    return x, aux


def embed(params: dict, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    """tokens [B, T] -> [B, T, D] in cfg.dtype."""
    with jax.named_scope("embed"):
        return constrain(embed_lookup(params["embed"]["embedding"].astype(cfg.jnp_dtype), tokens), _ACT)


def output_logits(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Final-normed hidden states x [B, T, D], output kernel [D, V] -> logits [B, T, V] fp32,
    vocab sharded by the rules (tensor axis). The training loss calls it a chunk of T at a time."""
    with jax.named_scope("output"):
        logits = jnp.einsum("btd,dv->btv", x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "seq", "vocab"))


def logits_from_hidden(params: dict, x: jax.Array) -> jax.Array:
    """Final-normed hidden states [B, T, D] -> logits [B, T, V] fp32 (untied output layer)."""
    return output_logits(x, params["output"]["kernel"])


def hidden_states(params: dict, tokens: jax.Array, cfg: ModelConfig, positions: jax.Array | None = None,
                  segment_ids: jax.Array | None = None) -> jax.Array:
    """tokens [B, T] -> final-normed hidden states [B, T, D] in cfg.dtype."""
    B, T = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    shards = context_parallel.num_shards()
    if shards > 1:  # load-balanced context-parallel layout; undone on the way out
        tokens, positions = context_parallel.to_layout(tokens, shards), context_parallel.to_layout(positions, shards)
        if segment_ids is not None:
            segment_ids = context_parallel.to_layout(segment_ids, shards)
    cos, sin = rotary_tables(positions, cfg.rotary_dim, cfg.rope_theta)
    x = embed(params, tokens, cfg)

    def attend(q, k, v):
        return attention(q, k, v, segment_ids, cfg), None

    def layer_fn(x, layer):
        return block(x, layer, cos, sin, attend, cfg)[0]

    if cfg.remat != "none":
        layer_fn = jax.checkpoint(layer_fn, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        x, _ = jax.lax.scan(lambda carry, layer: (layer_fn(carry, layer), None), x, params["layers"])
    else:
        for i in range(cfg.num_layers):
            x = layer_fn(x, jax.tree.map(lambda a: a[i], params["layers"]))
    if shards > 1:
        x = constrain(context_parallel.from_layout(x, shards), _ACT)
    return rms_norm(x, params["final_norm"]["scale"], cfg.rms_norm_eps)


def forward(params: dict, tokens: jax.Array, cfg: ModelConfig, positions: jax.Array | None = None,
            segment_ids: jax.Array | None = None) -> jax.Array:
    """tokens [B, T] int -> logits [B, T, V] fp32.

    positions [B, T] (default 0..T-1) feed the rotary tables; segment_ids [B, T] (default one
    segment) restrict attention to tokens of the same packed document."""
    return logits_from_hidden(params, hidden_states(params, tokens, cfg, positions, segment_ids))
