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
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from glm_jax.config import ModelConfig

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


def param_specs(cfg: ModelConfig) -> dict:
    """The spec tree of a GLM model (see the module docstring for the layout)."""
    L, D, H, K, E = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    F, V, dt = cfg.ffn_hidden_size, cfg.vocab_size, cfg.jnp_param_dtype

    def spec(shape, axes, init="normal"):
        return ParamSpec(tuple(shape), tuple(axes), init, dt)

    def proj(heads, heads_axis):
        out = {"kernel": spec((L, D, heads, E), ("layers", "embed", heads_axis, "head_dim"))}
        if cfg.qkv_bias:
            out["bias"] = spec((L, heads, E), ("layers", heads_axis, "head_dim"), "zeros")
        return out

    layers = {
        "attn_norm": {"scale": spec((L, D), ("layers", None), "ones")},
        "attn": {
            "q": proj(H, "heads"),
            "k": proj(K, "kv_heads"),
            "v": proj(K, "kv_heads"),
            "o": {"kernel": spec((L, H, E, D), ("layers", "heads", "head_dim", "embed"))},
        },
        "mlp_norm": {"scale": spec((L, D), ("layers", None), "ones")},
        "mlp": {
            "wi": {"kernel": spec((L, D, 2, F), ("layers", "embed", None, "mlp"))},
            "wo": {"kernel": spec((L, F, D), ("layers", "mlp", "embed"))},
        },
    }
    if cfg.post_norms:
        layers["attn_post_norm"] = {"scale": spec((L, D), ("layers", None), "ones")}
        layers["mlp_post_norm"] = {"scale": spec((L, D), ("layers", None), "ones")}
    return {
        "embed": {"embedding": spec((V, D), ("vocab", "embed"))},
        "layers": layers,
        "final_norm": {"scale": spec((D,), (None,), "ones")},
        "output": {"kernel": spec((D, V), ("embed", "vocab"))},
    }


def _is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


@functools.lru_cache(maxsize=None)
def _stacked_paths() -> frozenset[tuple[str, ...]]:
    # Which leaves are stacked depends on the tree's structure, not on sizes: read it off a tiny
    # spec tree that has every optional leaf (biases, post-norms).
    full = ModelConfig(name="structure", vocab_size=8, hidden_size=8, num_layers=1, num_heads=1, kv_groups=1,
                       head_dim=2, ffn_hidden_size=8, rotary_fraction=1.0, qkv_bias=True, post_norms=True)
    flat = jax.tree_util.tree_flatten_with_path(param_specs(full), is_leaf=_is_spec)[0]
    return frozenset(tuple(k.key for k in kp) for kp, s in flat if s.logical_axes[:1] == (LAYERS_AXIS,))


def is_stacked(path: tuple[str, ...]) -> bool:
    """True when the leaf at `path` (e.g. ("layers", "mlp", "wi", "kernel")) carries a leading
    `layers` logical axis in the spec tree, i.e. holds one slice per layer along axis 0. Derived
    from the spec tree's logical axes; checkpoints and the converter key map ask this."""
    return tuple(path) in _stacked_paths()


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters, from shapes alone (nothing allocated)."""
    return sum(math.prod(s.shape) for s in jax.tree.leaves(param_specs(cfg), is_leaf=_is_spec))


def abstract_params(cfg: ModelConfig) -> dict:
    """ShapeDtypeStruct tree of the parameters (for eval_shape / AOT lowering)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), param_specs(cfg), is_leaf=_is_spec)


def logical_axes(cfg: ModelConfig) -> dict:
    """Tree of logical-axis tuples, one per leaf."""
    return jax.tree.map(lambda s: s.logical_axes, param_specs(cfg), is_leaf=_is_spec)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Random parameters. Each leaf draws from `fold_in(key, leaf index)`, so the values do not
    depend on the mesh. Jit it with `out_shardings` to create the weights already sharded."""
    specs, treedef = jax.tree.flatten(param_specs(cfg), is_leaf=_is_spec)

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
    for path, s in jax.tree_util.tree_flatten_with_path(param_specs(cfg), is_leaf=_is_spec)[0]:
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
