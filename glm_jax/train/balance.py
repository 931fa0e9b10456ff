"""Aux-loss-free load balancing (DeepSeek-V3, as GLM-4.5 trains): each MoE layer's per-expert
routing bias (params ...["moe"]["router"]["bias"], HF `e_score_correction_bias`) is moved every
step by a fixed amount toward balanced load, outside the gradient:

    bias_e <- bias_e + rate x sign(mean_load - load_e)

so an overloaded expert becomes less likely to be chosen and an idle one more likely. The bias
only decides which experts a token visits (glm_jax.model.moe.route), never the weights, and has no
gradient (the optimizer leaves it alone; weight decay skips biases). `train.router_bias_rate` = 0
freezes it.

    params = update_router_bias(params, stats, rate)     # stats from model.hidden_states_and_stats
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def router_bias_paths(params: dict) -> dict:
    """{stats key: the router-bias path in params} for every MoE stack / module the model has."""
    out = {}
    if "moe_layers" in params:
        out["moe_layers"] = ("moe_layers", "moe", "router", "bias")
    if "mtp" in params and "moe" in params["mtp"]["block"]:
        out["mtp"] = ("mtp", "block", "moe", "router", "bias")
    return out


def nudge(bias: jax.Array, load: jax.Array, rate: float) -> jax.Array:
    """bias [..., X], load [..., X] (assignments per expert) -> the bias after one balancing step."""
    mean = jnp.mean(load, axis=-1, keepdims=True)
    return bias + jnp.asarray(rate, bias.dtype) * jnp.sign(mean - load).astype(bias.dtype)


def get_leaf(tree: dict, path: tuple):
    return tree if not path else get_leaf(tree[path[0]], path[1:])


def set_leaf(tree: dict, path: tuple, value) -> dict:
    """A copy of `tree` with the leaf at `path` replaced (the other leaves shared)."""
    return value if not path else {**tree, path[0]: set_leaf(tree[path[0]], path[1:], value)}


def update_router_bias(params: dict, stats: dict, rate: float) -> dict:
    """params with every router bias nudged by the step's loads (`stats[key]["load"]`)."""
    if rate == 0:
        return params
    for key, path in router_bias_paths(params).items():
        if key in stats:
            params = set_leaf(params, path, nudge(get_leaf(params, path), stats[key]["load"], rate))
    return params


def load_imbalance(stats: dict) -> jax.Array:
    """max / mean assignments per expert, averaged over the MoE layers (1 = perfectly balanced)."""
    load = stats["moe_layers"]["load"]
    return jnp.mean(jnp.max(load, -1) / jnp.maximum(jnp.mean(load, -1), 1e-9))
