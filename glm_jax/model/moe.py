"""The mixture-of-experts block of GLM-4.5 / GLM-4.5-Air (transformers' Glm4MoeMoE) as pure functions.

    out, stats = moe_block(h [B, T, D], p, cfg, run)      # p: one layer's params["moe_layers"]["moe"]

Routing (`route`), in fp32 whatever the compute dtype: scores = sigmoid(h W_router); the choice
adds the per-expert correction bias (`router.bias`, HF `e_score_correction_bias`), which decides
*which* experts a token visits but never *how much* (the weights come from the unbiased scores),
and gets no gradient: the train step moves it toward balanced load (glm_jax.train.balance).
Group-limited top-k (fields of `model.moe`): experts form `expert_groups` groups, a group scores by the sum of its two
best biased scores, a token keeps its `expert_groups_per_token` best groups and picks its top k
experts among them. Weights are renormalized to sum to 1 (`norm_topk_prob`) and scaled by
`routed_scaling_factor`. The shared experts (one fused SwiGLU of C x num_shared_experts) see
every token.

Expert compute (`routed_experts`) is dropless: the N x k (token, expert) assignments are sorted
by expert and run as one grouped matmul over the stacked [X, ...] expert weights
(glm_jax.kernels.grouped_matmul, `run.moe_matmul`: XLA's `jax.lax.ragged_dot`, or megablox's
Pallas kernel on TPU), so every token reaches its k experts whatever the load and no size has to
be a multiple of a kernel tile (Air's 1,408 is fine; the group sizes are data). A Pallas kernel
cannot be partitioned by XLA, so with megablox on a mesh of several devices the experts always
run inside the expert-parallel `shard_map` (with expert=1 too: each device its own tokens).
`run.moe_capacity_factor` > 0 is the explicit dropping option: each expert keeps its first
capacity = ceil(cf x N x k / X) assignments (token order) and the rest contribute nothing
(glm_jax.model.experts.capacity, the receivers being the X experts).

With an `expert` mesh axis > 1 the experts are split over it and tokens travel to them by
all-to-all inside a `shard_map` (glm_jax.model.expert_parallel); the numbers are the local path's.

Stats (per layer): `load` [X] fp32, the assignments each expert received; `dropped` the
assignments cut by a capacity (always 0 when dropless).

Letters: B batch, T sequence, N = B x T tokens, D hidden, X experts, k experts per token,
C expert ffn, A = N x k assignments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm_jax.config import ModelConfig, RunConfig
from glm_jax.model import expert_parallel
from glm_jax.model import experts as experts_lib
from glm_jax.model.layers import swiglu_mlp


def route(x: jax.Array, kernel: jax.Array, bias: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """x [N, D], router kernel [D, X], correction bias [X] -> (weights [N, k] fp32, experts [N, k] int32)."""
    moe = cfg.moe
    X, k, G = moe.num_experts, moe.experts_per_token, moe.expert_groups
    logits = jnp.einsum("nd,dx->nx", x.astype(jnp.float32), kernel.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
    scores = jax.nn.sigmoid(logits)
    choice = scores + jax.lax.stop_gradient(bias.astype(jnp.float32))[None]
    if G > 1:
        grouped = choice.reshape(-1, G, X // G)
        group_scores = jax.lax.top_k(grouped, 2)[0].sum(-1)  # [N, G]
        keep_groups = jax.lax.top_k(group_scores, moe.expert_groups_per_token)[1]  # [N, g]
        group_mask = jnp.any(jax.nn.one_hot(keep_groups, G, dtype=jnp.bool_), axis=1)  # [N, G]
        choice = jnp.where(jnp.repeat(group_mask, X // G, axis=1), choice, -jnp.inf)
    experts = jax.lax.top_k(jax.lax.stop_gradient(choice), k)[1]
    weights = jnp.take_along_axis(scores, experts, axis=1)
    if moe.norm_topk_prob:
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    return weights * moe.routed_scaling_factor, experts.astype(jnp.int32)


def routed_experts(x: jax.Array, weights: jax.Array, experts: jax.Array, wi: jax.Array, wo: jax.Array,
                   cfg: ModelConfig, run: RunConfig) -> tuple[jax.Array, dict]:
    """x [N, D], weights / experts [N, k], wi [X, D, 2, C], wo [X, C, D] -> ([N, D], stats), on one
    device's tokens and all X experts: sort the assignments by expert, one grouped matmul, unsort."""
    N, k = experts.shape
    X = cfg.moe.num_experts
    order, sizes = experts_lib.sort_by_expert(experts, X)
    kept = experts_lib.kept_counts(sizes, X, experts_lib.capacity(run.moe_capacity_factor, N * k, X))
    sorted_experts = experts.reshape(-1)[order]
    rank = jnp.arange(N * k) - (jnp.cumsum(sizes) - sizes)[sorted_experts]  # within its expert
    keep = rank < kept[sorted_experts]
    y = experts_lib.grouped_ffn(x[order // k], sizes, wi, wo, run.moe_matmul)
    y = jnp.where(keep[:, None], y, jnp.zeros((), y.dtype))
    out = experts_lib.combine(y, order, weights, x.dtype)
    return out, {"load": sizes.astype(jnp.float32), "dropped": jnp.sum(~keep).astype(jnp.float32)}


def moe_block(h: jax.Array, p: dict, cfg: ModelConfig, run: RunConfig) -> tuple[jax.Array, dict]:
    """h [B, T, D] (normed), p one layer's `moe` params -> (out [B, T, D], stats)."""
    B, T, D = h.shape
    x = h.reshape(B * T, D)
    with jax.named_scope("router"):
        weights, experts = route(x, p["router"]["kernel"], p["router"]["bias"], cfg)
    with jax.named_scope("experts"):
        wi, wo = p["experts"]["wi"]["kernel"], p["experts"]["wo"]["kernel"]
        # experts split over the `expert` axis, or a Pallas kernel XLA cannot partition: per device
        if expert_parallel.num_shards() > 1 or (run.moe_matmul == "megablox" and expert_parallel.on_a_mesh()):
            out, stats = expert_parallel.routed_experts(x, weights, experts, wi, wo, cfg, run, (B, T))
        else:
            out, stats = routed_experts(x, weights, experts, wi, wo, cfg, run)
    out = out.reshape(B, T, D)
    if "shared" in p:
        with jax.named_scope("shared_experts"):
            out = out + swiglu_mlp(h, p["shared"]["wi"]["kernel"], p["shared"]["wo"]["kernel"])
    return out, stats
