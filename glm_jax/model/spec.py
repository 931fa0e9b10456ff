"""Every weight declared once: shape, logical axes, initializer.

The spec tree has the same structure as the parameter tree. From it we derive, never hand-write,
`init_params`, `param_count`, `abstract_params` (ShapeDtypeStructs for AOT / eval_shape) and the
sharding of every leaf (`glm_jax.sharding.sharding_for`). Stacked layer weights carry a leading
`layers` axis so the blocks run under `lax.scan`.

Parameter tree (letters: L layers, D hidden, H heads, K kv heads, E head dim, F ffn, V vocab):

    embed.embedding            [V, D]
    layers.attn_norm.scale     [L, D]
    layers.attn.{q,k,v}.kernel [L, D, H|K, E]     layers.attn.{q,k,v}.bias [L, H|K, E]
    layers.attn.o.kernel       [L, H, E, D]
    layers.mlp_norm.scale      [L, D]
    layers.mlp.wi.kernel       [L, D, 2, F]       (index 0 of the `2` axis is the SwiGLU gate)
    layers.mlp.wo.kernel       [L, F, D]
    layers.attn_post_norm.scale, layers.mlp_post_norm.scale [L, D]   (only with `post_norms`: GLM-4-0414)
    final_norm.scale           [D]
    output.kernel              [D, V]             (untied from the embedding)

With `qk_norm` (GLM-4.5) every attention also has `attn.q_norm.scale`, `attn.k_norm.scale` [L, E].

Mixture of experts (`moe.num_experts` > 0, GLM-4.5 / GLM-4.5-Air; M = MoE layers, X experts, C each
expert's ffn, S = shared ffn = C x num_shared_experts). Two stacks, each under its own `lax.scan`:
`layers` holds the `moe.first_dense_layers` dense layers (absent when 0), `moe_layers` the M MoE layers
(same attention, a MoE block in place of the MLP). Two stacks rather than one stack with a static
schedule: the dense and MoE MLPs have different shapes, so one stack would carry both MLPs in every
layer (wasting the dense MLP's 134M weights x 45 on Air) or pad; two scans cost one extra loop.

    moe_layers.moe.router.kernel    [M, D, X]  fp32 whatever param_dtype (routing decisions in fp32)
    moe_layers.moe.router.bias      [M, X]     e_score_correction_bias: selection only, no gradient;
                                               the train step nudges it toward balanced load
    moe_layers.moe.experts.wi.kernel [M, X, D, 2, C]   (axis `experts`; index 0 of `2` is the gate)
    moe_layers.moe.experts.wo.kernel [M, X, C, D]
    moe_layers.moe.shared.wi.kernel  [M, D, 2, S]     moe_layers.moe.shared.wo.kernel [M, S, D]

Multi-token prediction (`mtp_layers` = 1): `mtp` holds one more layer (MoE when the model is) and
the module around it, unstacked, as the released checkpoints store it at layer index L:

    mtp.embed.embedding [V, D]  mtp.enorm.scale [D]  mtp.hnorm.scale [D]  mtp.eh_proj.kernel [2, D, D]
    mtp.block.*  (one layer, no L axis)  mtp.head_norm.scale [D]  mtp.output.kernel [D, V]

The MTP embedding and head are their own leaves: the released checkpoints carry them as separate
tensors (model.layers.L.embed_tokens, shared_head.head), which vLLM loads as the MTP's own, so
from-hf -> to-hf keeps them exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from glm_jax.config import ModelConfig, MoEConfig

LAYERS_AXIS = "layers"  # the logical axis of the stacked (scanned) layers
INITIALIZERS = ("normal", "zeros", "ones")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    logical_axes: tuple[str | None, ...]
    init: str  # one of INITIALIZERS; "normal" uses ModelConfig.init_std
    dtype: Any = jnp.float32

    def __post_init__(self):
        assert len(self.shape) == len(self.logical_axes), (self.shape, self.logical_axes)
        assert self.init in INITIALIZERS, self.init


def _layer_specs(cfg: ModelConfig, L: int | None, moe: bool) -> dict:
    """The spec tree of one layer kind: stacked [L, ...] with a leading `layers` axis, or one layer
    (L None: the MTP block). `moe` puts a MoE block in place of the dense MLP."""
    D, H, K, E = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dt = cfg.jnp_param_dtype
    lead, lead_axes = ((L,), ("layers",)) if L is not None else ((), ())

    def spec(shape, axes, init="normal", dtype=dt):
        return ParamSpec(lead + tuple(shape), lead_axes + tuple(axes), init, dtype)

    def proj(heads, heads_axis):
        out = {"kernel": spec((D, heads, E), ("embed", heads_axis, "head_dim"))}
        if cfg.qkv_bias:
            out["bias"] = spec((heads, E), (heads_axis, "head_dim"), "zeros")
        return out

    def mlp(F, experts=()):
        x_axes = ("experts",) if experts else ()
        d_axis = "expert_embed" if experts else "embed"  # `expert` is taken by the experts dim
        return {"wi": {"kernel": spec(experts + (D, 2, F), x_axes + (d_axis, None, "mlp"))},
                "wo": {"kernel": spec(experts + (F, D), x_axes + ("mlp", d_axis))}}

    attn = {"q": proj(H, "heads"), "k": proj(K, "kv_heads"), "v": proj(K, "kv_heads"),
            "o": {"kernel": spec((H, E, D), ("heads", "head_dim", "embed"))}}
    if cfg.qk_norm:
        attn["q_norm"] = {"scale": spec((E,), (None,), "ones")}
        attn["k_norm"] = {"scale": spec((E,), (None,), "ones")}
    layer = {"attn_norm": {"scale": spec((D,), (None,), "ones")}, "attn": attn,
             "mlp_norm": {"scale": spec((D,), (None,), "ones")}}
    if moe:
        X = cfg.moe.num_experts
        block = {"router": {"kernel": spec((D, X), ("embed", None), dtype=jnp.float32),
                            "bias": spec((X,), (None,), "zeros", dtype=jnp.float32)},
                 "experts": mlp(cfg.moe.ffn_hidden_size, (X,))}
        if cfg.moe.num_shared_experts:
            block["shared"] = mlp(cfg.moe.ffn_hidden_size * cfg.moe.num_shared_experts)
        layer["moe"] = block
    else:
        layer["mlp"] = mlp(cfg.ffn_hidden_size)
    if cfg.post_norms:
        layer["attn_post_norm"] = {"scale": spec((D,), (None,), "ones")}
        layer["mlp_post_norm"] = {"scale": spec((D,), (None,), "ones")}
    return layer


def param_specs(cfg: ModelConfig) -> dict:
    """The spec tree of a GLM model (see the module docstring for the layout)."""
    D, V, dt = cfg.hidden_size, cfg.vocab_size, cfg.jnp_param_dtype

    def spec(shape, axes, init="normal"):
        return ParamSpec(tuple(shape), tuple(axes), init, dt)

    tree = {"embed": {"embedding": spec((V, D), ("vocab", "embed"))}}
    if cfg.num_dense_layers:
        tree["layers"] = _layer_specs(cfg, cfg.num_dense_layers, moe=False)
    if cfg.num_moe_layers:
        tree["moe_layers"] = _layer_specs(cfg, cfg.num_moe_layers, moe=True)
    tree["final_norm"] = {"scale": spec((D,), (None,), "ones")}
    tree["output"] = {"kernel": spec((D, V), ("embed", "vocab"))}
    if cfg.mtp_layers:
        tree["mtp"] = {"embed": {"embedding": spec((V, D), ("vocab", "embed"))},
                       "enorm": {"scale": spec((D,), (None,), "ones")},
                       "hnorm": {"scale": spec((D,), (None,), "ones")},
                       "eh_proj": {"kernel": spec((2, D, D), (None, "embed", None))},
                       "block": _layer_specs(cfg, None, moe=cfg.is_moe),
                       "head_norm": {"scale": spec((D,), (None,), "ones")},
                       "output": {"kernel": spec((D, V), ("embed", "vocab"))}}
    return tree


def is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


@functools.lru_cache(maxsize=None)
def _stacked_paths() -> frozenset[tuple[str, ...]]:
    # Which leaves are stacked depends on the tree's structure, not on sizes: read it off a tiny
    # spec tree that has every optional leaf (biases, post-norms, QK-norm, both MoE stacks, MTP).
    full = ModelConfig(name="structure", vocab_size=8, hidden_size=8, num_layers=2, num_heads=1, kv_groups=1,
                       head_dim=2, ffn_hidden_size=8, rotary_fraction=1.0, qkv_bias=True, post_norms=True,
                       qk_norm=True, mtp_layers=1,
                       moe=MoEConfig(num_experts=2, experts_per_token=1, ffn_hidden_size=4, num_shared_experts=1,
                                     first_dense_layers=1))
    flat = jax.tree_util.tree_flatten_with_path(param_specs(full), is_leaf=is_spec)[0]
    return frozenset(tuple(k.key for k in kp) for kp, s in flat if s.logical_axes[:1] == (LAYERS_AXIS,))


def is_stacked(path: tuple[str, ...]) -> bool:
    """True when the leaf at `path` (e.g. ("layers", "mlp", "wi", "kernel")) carries a leading
    `layers` logical axis in the spec tree, i.e. holds one slice per layer along axis 0. Derived
    from the spec tree's logical axes; checkpoints and the converter key map ask this."""
    return tuple(path) in _stacked_paths()


def param_count(cfg: ModelConfig, mtp: bool = True) -> int:
    """Number of parameters, from shapes alone (nothing allocated); `mtp=False` leaves out the MTP
    module (what transformers' Glm4MoeForCausalLM builds, and what the model cards' totals count)."""
    specs = dict(param_specs(cfg))
    if not mtp:
        specs.pop("mtp", None)
    return sum(math.prod(s.shape) for s in jax.tree.leaves(specs, is_leaf=is_spec))


def active_param_count(cfg: ModelConfig, mtp: bool = False) -> int:
    """Parameters one token's forward pass uses: the total less the routed experts it does not
    visit (num_experts - experts_per_token of them in every MoE layer). The embedding counts
    whole, as in the total (a lookup touches one row of it)."""
    total = param_count(cfg, mtp)
    if not cfg.is_moe:
        return total
    per_expert = 3 * cfg.hidden_size * cfg.moe.ffn_hidden_size
    moe_layers = cfg.num_moe_layers + (cfg.mtp_layers if mtp else 0)
    return total - moe_layers * (cfg.moe.num_experts - cfg.moe.experts_per_token) * per_expert


def abstract_params(cfg: ModelConfig) -> dict:
    """ShapeDtypeStruct tree of the parameters (for eval_shape / AOT lowering)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), param_specs(cfg), is_leaf=is_spec)


def logical_axes(cfg: ModelConfig) -> dict:
    """Tree of logical-axis tuples, one per leaf."""
    return jax.tree.map(lambda s: s.logical_axes, param_specs(cfg), is_leaf=is_spec)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Random parameters. Each leaf draws from `fold_in(key, leaf index)`, so the values do not
    depend on the mesh. Jit it with `out_shardings` to create the weights already sharded."""
    specs, treedef = jax.tree.flatten(param_specs(cfg), is_leaf=is_spec)

    def make(i, s: ParamSpec):
        if s.init == "zeros":
            return jnp.zeros(s.shape, s.dtype)
        if s.init == "ones":
            return jnp.ones(s.shape, s.dtype)
        return (cfg.init_std * jax.random.normal(jax.random.fold_in(key, i), s.shape, jnp.float32)).astype(s.dtype)

    return jax.tree.unflatten(treedef, [make(i, s) for i, s in enumerate(specs)])


def format_table(cfg: ModelConfig) -> str:
    """Per-leaf table (name, shape, logical axes, dtype) and the total, for the CLI."""
    rows = []
    for path, s in jax.tree_util.tree_flatten_with_path(param_specs(cfg), is_leaf=is_spec)[0]:
        name = ".".join(p.key for p in path)
        rows.append((name, "x".join(map(str, s.shape)), ",".join(a or "-" for a in s.logical_axes),
                     jnp.dtype(s.dtype).name, math.prod(s.shape)))
    widths = [max(len(str(r[i])) for r in rows + [("name", "shape", "logical axes", "dtype", "")]) for i in range(4)]
    head = ("name", "shape", "logical axes", "dtype")
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  params"]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths)) + f"  {r[4]:,}")
    lines.append(f"total parameters: {param_count(cfg):,}")
    return "\n".join(lines)
