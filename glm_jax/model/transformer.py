"""GLM-4 forward pass: embed -> L x (pre-norm attention, pre-norm SwiGLU) -> final norm -> output.

With `cfg.post_norms` (GLM-4-0414) each sublayer's output is RMS-normed again before its residual
add: x + norm(attn(norm(x))), then x + norm(mlp(norm(x))) (transformers' Glm4: post_self_attn_layernorm,
post_mlp_layernorm).

    forward(params, tokens, cfg, run=RunConfig(), positions=None, segment_ids=None) -> logits [B, T, V] fp32

`cfg` (config.ModelConfig) is the architecture; `run` (config.RunConfig) how it runs: the attention
backend, the compute dtype, scan, remat and the experts' matmul and dispatch.

Letters: B batch, T sequence, D hidden, H heads, K kv heads, E head dim, F ffn, V vocab.
The stacked layers run under `lax.scan` (or a Python loop with `run.scan_layers=False`: same
numbers, longer compile). `run.remat` picks what the backward pass recomputes; block outputs
are tagged with `checkpoint_name` ("attn_out", "mlp_out") for the named policy.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from glm_jax.config import ModelConfig, RunConfig
from glm_jax.kernels import context_parallel
from glm_jax.model.attention import attention
from glm_jax.model.layers import rms_norm, rotary, rotary_tables, swiglu_mlp
from glm_jax.model.moe import moe_block
from glm_jax.sharding import constrain, embed_lookup

_ACT = ("batch", "seq", None)  # activations [B, T, D]


def _remat_policy(name: str):
    return {
        "full": None,  # save nothing: recompute the whole block
        "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "save_attn_mlp_out": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
    }[name]


def sublayers(x: jax.Array, layer: dict, cos: jax.Array, sin: jax.Array, attend: Callable, cfg: ModelConfig,
              run: RunConfig):
    """One GLM layer. x [B, T, D]; `layer` is one slice of params["layers"] or params["moe_layers"]
    (no L axis), or the MTP block.

    `attend(q [B,T,H,E], k [B,T,K,E], v [B,T,K,E]) -> (out [B,T,H,E], aux)` does the attention
    (training: the attention backend over the segment mask; decoding: against a KV cache, with
    the updated cache as `aux`). Returns (x, aux, moe stats or None) (glm_jax.model.moe)."""
    dt = x.dtype
    rotate = rotary(cfg.rotary_style)
    with jax.named_scope("attention"):
        h = rms_norm(x, layer["attn_norm"]["scale"], cfg.rms_norm_eps)
        attn = layer["attn"]

        def proj(p, axes):
            y = jnp.einsum("btd,dne->btne", h, p["kernel"].astype(dt))
            if "bias" in p:
                y = y + p["bias"].astype(dt)
            return constrain(y, ("batch", "seq", axes, "head_dim"))

        q, k, v = proj(attn["q"], "heads"), proj(attn["k"], "kv_heads"), proj(attn["v"], "kv_heads")
        if cfg.qk_norm:  # GLM-4.5: RMSNorm over each head's dims, before rotary
            q = rms_norm(q, attn["q_norm"]["scale"], cfg.rms_norm_eps)
            k = rms_norm(k, attn["k_norm"]["scale"], cfg.rms_norm_eps)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a, aux = attend(q, k, v)
        a = constrain(a, ("batch", "seq", "heads", "head_dim"))
        out = jnp.einsum("bthe,hed->btd", a, attn["o"]["kernel"].astype(dt))
        if cfg.post_norms:  # GLM-4-0414: normalize the sublayer's output before the residual add
            out = rms_norm(out, layer["attn_post_norm"]["scale"], cfg.rms_norm_eps)
        x = x + checkpoint_name(constrain(out, _ACT), "attn_out")
    stats = None
    with jax.named_scope("moe" if "moe" in layer else "mlp"):
        h = rms_norm(x, layer["mlp_norm"]["scale"], cfg.rms_norm_eps)
        if "moe" in layer:
            out, stats = moe_block(h, layer["moe"], cfg, run)
        else:
            out = swiglu_mlp(h, layer["mlp"]["wi"]["kernel"], layer["mlp"]["wo"]["kernel"])
        if cfg.post_norms:
            out = rms_norm(out, layer["mlp_post_norm"]["scale"], cfg.rms_norm_eps)
        x = x + checkpoint_name(constrain(out, _ACT), "mlp_out")
    return x, aux, stats


def block(x: jax.Array, layer: dict, cos: jax.Array, sin: jax.Array, attend: Callable, cfg: ModelConfig,
          run: RunConfig):
    """`sublayers` without the MoE stats: (x, aux). Used by decoding."""
    x, aux, _ = sublayers(x, layer, cos, sin, attend, cfg, run)
    return x, aux


def embed(params: dict, tokens: jax.Array, run: RunConfig) -> jax.Array:
    """tokens [B, T] -> [B, T, D] in run.dtype."""
    with jax.named_scope("embed"):
        return constrain(embed_lookup(params["embed"]["embedding"].astype(run.jnp_dtype), tokens), _ACT)


def output_logits(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Final-normed hidden states x [B, T, D], output kernel [D, V] -> logits [B, T, V] fp32,
    vocab sharded by the rules (tensor axis). The training loss calls it a chunk of T at a time."""
    with jax.named_scope("output"):
        logits = jnp.einsum("btd,dv->btv", x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "seq", "vocab"))


def logits_from_hidden(params: dict, x: jax.Array) -> jax.Array:
    """Final-normed hidden states [B, T, D] -> logits [B, T, V] fp32 (untied output layer)."""
    return output_logits(x, params["output"]["kernel"])


def _run_stack(x: jax.Array, stack: dict, n: int, layer_fn: Callable, run: RunConfig):
    """Runs the n stacked layers of `stack` over x: (x, stats stacked [n, ...] or None)."""
    if run.scan_layers:
        return jax.lax.scan(layer_fn, x, stack)
    stats = []
    for i in range(n):
        x, st = layer_fn(x, jax.tree.map(lambda a: a[i], stack))
        stats.append(st)
    return x, (None if stats[0] is None else jax.tree.map(lambda *a: jnp.stack(a), *stats))


def _prepare(tokens, positions, segment_ids):
    B, T = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    shards = context_parallel.num_shards()
    if shards > 1:  # load-balanced context-parallel layout; undone on the way out
        tokens, positions = context_parallel.to_layout(tokens, shards), context_parallel.to_layout(positions, shards)
        if segment_ids is not None:
            segment_ids = context_parallel.to_layout(segment_ids, shards)
    return tokens, positions, segment_ids, shards


def _layer_fn(cos, sin, segment_ids, cfg, run):
    def attend(q, k, v):
        return attention(q, k, v, segment_ids, run), None

    def layer_fn(x, layer):
        x, _, stats = sublayers(x, layer, cos, sin, attend, cfg, run)
        return x, stats

    if run.remat != "none":
        layer_fn = jax.checkpoint(layer_fn, policy=_remat_policy(run.remat), prevent_cse=not run.scan_layers)
    return layer_fn


def hidden_states_and_stats(params: dict, tokens: jax.Array, cfg: ModelConfig, run: RunConfig = RunConfig(),
                            positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                            mtp_tokens: jax.Array | None = None):
    """tokens [B, T] -> (final-normed hidden states [B, T, D] in run.dtype, stats).

    stats: {"moe_layers": {"load": [M, X], "dropped": [M]}} for MoE models ({} for dense ones), and
    with `mtp_tokens` [B, T] (the token after each position, e.g. the targets) and an MTP module,
    "mtp_hidden": the MTP module's head-normed hidden states [B, T, D] (predicting the token two
    ahead) and "mtp": its block's routing stats."""
    tokens, positions, segment_ids, shards = _prepare(tokens, positions, segment_ids)
    cos, sin = rotary_tables(positions, cfg.rotary_dim, cfg.rope_theta)
    layer_fn = _layer_fn(cos, sin, segment_ids, cfg, run)
    x = embed(params, tokens, run)
    stats = {}
    if "layers" in params:
        x, _ = _run_stack(x, params["layers"], cfg.num_dense_layers, layer_fn, run)
    if "moe_layers" in params:
        x, stats["moe_layers"] = _run_stack(x, params["moe_layers"], cfg.num_moe_layers, layer_fn, run)
    x = rms_norm(x, params["final_norm"]["scale"], cfg.rms_norm_eps)
    if mtp_tokens is not None and "mtp" in params:
        if shards > 1:
            mtp_tokens = context_parallel.to_layout(mtp_tokens, shards)
        h, stats["mtp"] = mtp_hidden(params["mtp"], x, mtp_tokens, layer_fn, cfg, run)
        stats["mtp_hidden"] = constrain(context_parallel.from_layout(h, shards), _ACT) if shards > 1 else h
    if shards > 1:
        x = constrain(context_parallel.from_layout(x, shards), _ACT)
    return x, stats


def mtp_hidden(p: dict, x: jax.Array, next_tokens: jax.Array, layer_fn: Callable, cfg: ModelConfig,
               run: RunConfig):
    """The multi-token-prediction module (DeepSeek-V3's MTP as GLM-4.5 releases it; vLLM's
    Glm4MoeMultiTokenPredictorLayer): position t combines the main model's final-normed hidden
    state h_t [B, T, D] with the embedding of the next token x_{t+1} (`next_tokens` [B, T]):
    eh_proj([enorm(embed(x_{t+1})), hnorm(h_t)]), runs one more layer over them (same causal,
    per-segment attention) and RMS-norms the result; its logits (`mtp.output`) predict x_{t+2}.
    Returns (hidden [B, T, D], the block's routing stats or None)."""
    with jax.named_scope("mtp"):
        dt = run.jnp_dtype
        e = constrain(embed_lookup(p["embed"]["embedding"].astype(dt), next_tokens), _ACT)
        e = rms_norm(e, p["enorm"]["scale"], cfg.rms_norm_eps)
        h = rms_norm(x, p["hnorm"]["scale"], cfg.rms_norm_eps)
        kernel = p["eh_proj"]["kernel"].astype(dt)
        y = jnp.einsum("btd,de->bte", e, kernel[0]) + jnp.einsum("btd,de->bte", h, kernel[1])
        y, stats = layer_fn(constrain(y, _ACT), p["block"])
        return rms_norm(y, p["head_norm"]["scale"], cfg.rms_norm_eps), stats


def hidden_states(params: dict, tokens: jax.Array, cfg: ModelConfig, run: RunConfig = RunConfig(),
                  positions: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
    """tokens [B, T] -> final-normed hidden states [B, T, D] in run.dtype."""
    return hidden_states_and_stats(params, tokens, cfg, run, positions, segment_ids)[0]


def forward(params: dict, tokens: jax.Array, cfg: ModelConfig, run: RunConfig = RunConfig(),
            positions: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
    """tokens [B, T] int -> logits [B, T, V] fp32.

    positions [B, T] (default 0..T-1) feed the rotary tables; segment_ids [B, T] (default one
    segment) restrict attention to tokens of the same packed document."""
    return logits_from_hidden(params, hidden_states(params, tokens, cfg, run, positions, segment_ids))
