"""The declared key map between our parameter tree and PyTorch checkpoints.

Two namings:
  "hf"    transformers' `GlmForCausalLM` (model.layers.N.self_attn.q_proj, mlp.gate_up_proj, ...), or
          `Glm4ForCausalLM` with `post_norms` (GLM-4-0414: + post_self_attn_layernorm, post_mlp_layernorm), or
          `Glm4MoeForCausalLM` for MoE configs (GLM-4.5: per-expert tensors, the MTP layer at index L)
  "thudm" the released THUDM checkpoints (transformer.encoder.layers.N.self_attention.query_key_value
          with fused [Q | K | V] rows, mlp.dense_h_to_4h, ...)

Each `TensorMap` ties one external tensor to one or more of our leaves and says how to reshape
in both directions; per-layer entries index the stacked `layers` axis (which leaves are stacked
comes from the spec tree's logical axes, `model.spec.is_stacked`). Shapes are checked
against the spec tree on import; a mismatch names the tensor and both shapes. Both directions
go through a `LeafReader` (train.checkpoint) so that a stacked leaf moves one layer at a time.

Letters: D hidden, H heads, K kv heads, E head dim, F ffn, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.config import ModelConfig
from glm_jax.model.spec import is_stacked, param_specs

if TYPE_CHECKING:
    from glm_jax.train.checkpoint import LeafReader

NAMINGS = ("hf", "thudm")
Path = tuple[str, ...]


class ConversionError(ValueError):
    """A checkpoint tensor is missing, unexpected, or has the wrong shape for the config."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    name: str  # external name; "{i}" is the layer index for per-layer entries, "{e}" the expert index
    leaves: tuple[Path, ...]  # our leaves (paths into the param tree)
    to_ext: Callable[..., np.ndarray]  # (*our arrays, cfg) -> external array
    from_ext: Callable[..., tuple[np.ndarray, ...]]  # (external array, cfg) -> our arrays
    # Where in the leaf (after its layer and expert index) this tensor lives, when several tensors
    # fill one leaf (e.g. (slice(None), 0): the gate half of a fused [D, 2, F] SwiGLU kernel).
    index: tuple | None = None

    def __post_init__(self):
        stacked = {is_stacked(p) for p in self.leaves}
        if len(stacked) != 1 or stacked.pop() != ("{i}" in self.name):
            raise AssertionError(f"key map entry {self.name!r}: a per-layer name ('{{i}}') must map to stacked "
                                 f"leaves only, and only those: {self.leaves}")
        if self.index is not None and len(self.leaves) != 1:
            raise AssertionError(f"key map entry {self.name!r}: an index needs exactly one leaf")

    @property
    def per_layer(self) -> bool:
        return is_stacked(self.leaves[0])

    @property
    def per_expert(self) -> bool:
        """One tensor per routed expert: the leaf's axis after `layers` is the `experts` axis."""
        return "{e}" in self.name

    def piece(self, a):
        """One layer's (and expert's) slice of a leaf -> the part this tensor holds."""
        return a if self.index is None else a[self.index]


def _same(a, cfg):
    return a


def _one(fn):
    return lambda a, cfg: (fn(a, cfg),)


def _heads_in(n_attr):  # ours [D, N, E] <-> torch Linear weight [N*E, D]
    return (lambda w, cfg: w.reshape(w.shape[0], -1).T,
            _one(lambda w, cfg: w.T.reshape(w.shape[1], getattr(cfg, n_attr), cfg.head_dim)))


def _bias_in(n_attr):  # ours [N, E] <-> [N*E]
    return (lambda b, cfg: b.reshape(-1),
            _one(lambda b, cfg: b.reshape(getattr(cfg, n_attr), cfg.head_dim)))


def _o_to(w, cfg):  # ours [H, E, D] -> [D, H*E]
    return w.reshape(-1, w.shape[-1]).T


def _o_from(w, cfg):
    return (w.T.reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size),)


def _wi_to(w, cfg):  # ours [D, 2, F] -> [2F, D], gate rows first
    return w.reshape(w.shape[0], -1).T


def _wi_from(w, cfg):
    return (w.T.reshape(cfg.hidden_size, 2, cfg.ffn_hidden_size),)


def _t(a, cfg):
    return a.T


def _qkv_to(q, k, v, cfg):  # fused [(H + 2K) * E, D] (weights) or [(H + 2K) * E] (biases)
    flat = (lambda w: w.reshape(w.shape[0], -1).T) if q.ndim == 3 else (lambda b: b.reshape(-1))
    xp = np if isinstance(q, np.ndarray) else jnp  # jnp when only shapes are traced (eval_shape)
    return xp.concatenate([flat(q), flat(k), flat(v)], axis=0)


def _qkv_from(w, cfg):
    E, H, K = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    q, k, v = np.split(w, [H * E, (H + K) * E], axis=0)
    if w.ndim == 2:
        return tuple(x.T.reshape(cfg.hidden_size, n, E) for x, n in ((q, H), (k, K), (v, K)))
    return tuple(x.reshape(n, E) for x, n in ((q, H), (k, K), (v, K)))


_L = ("layers",)
_GATE, _UP = (slice(None), 0), (slice(None), 1)  # the halves of a [D, 2, F] SwiGLU kernel


def _glm4_moe_layer(cfg: ModelConfig, lp: str, at: Path, moe: bool) -> list[TensorMap]:
    """transformers' Glm4MoeDecoderLayer under name prefix `lp` and our path prefix `at`. Routed
    experts are one tensor each (model.layers.N.mlp.experts.J.{gate,up,down}_proj.weight, as the
    released checkpoints and save_pretrained write them), stacked into our [X, ...] leaves."""
    one = _one(_same)
    maps = [TensorMap(lp + "input_layernorm.weight", (at + ("attn_norm", "scale"),), _same, one)]
    for n, attr in (("q", "num_heads"), ("k", "num_kv_heads"), ("v", "num_kv_heads")):
        maps.append(TensorMap(lp + f"self_attn.{n}_proj.weight", (at + ("attn", n, "kernel"),), *_heads_in(attr)))
        if cfg.qkv_bias:
            maps.append(TensorMap(lp + f"self_attn.{n}_proj.bias", (at + ("attn", n, "bias"),), *_bias_in(attr)))
    maps.append(TensorMap(lp + "self_attn.o_proj.weight", (at + ("attn", "o", "kernel"),), _o_to, _o_from))
    if cfg.qk_norm:
        maps += [TensorMap(lp + "self_attn.q_norm.weight", (at + ("attn", "q_norm", "scale"),), _same, one),
                 TensorMap(lp + "self_attn.k_norm.weight", (at + ("attn", "k_norm", "scale"),), _same, one)]
    maps.append(TensorMap(lp + "post_attention_layernorm.weight", (at + ("mlp_norm", "scale"),), _same, one))

    def swiglu(name: str, leaf: Path) -> list[TensorMap]:  # [D, 2, F] / [F, D] <-> gate, up [F, D]; down [D, F]
        return [TensorMap(name + "gate_proj.weight", (leaf + ("wi", "kernel"),), _t, _one(_t), _GATE),
                TensorMap(name + "up_proj.weight", (leaf + ("wi", "kernel"),), _t, _one(_t), _UP),
                TensorMap(name + "down_proj.weight", (leaf + ("wo", "kernel"),), _t, _one(_t))]

    if not moe:
        return maps + swiglu(lp + "mlp.", at + ("mlp",))
    m = at + ("moe",)
    maps += [TensorMap(lp + "mlp.gate.weight", (m + ("router", "kernel"),), _t, _one(_t)),
             TensorMap(lp + "mlp.gate.e_score_correction_bias", (m + ("router", "bias"),), _same, one)]
    maps += swiglu(lp + "mlp.experts.{e}.", m + ("experts",))
    if cfg.moe.num_shared_experts:
        maps += swiglu(lp + "mlp.shared_experts.", m + ("shared",))
    return maps


def _eh_to(k, cfg):  # ours [2, D, D] (embedding half, hidden half) -> torch Linear [D, 2D] over cat([e, h])
    xp = np if isinstance(k, np.ndarray) else jnp
    return xp.concatenate([k[0].T, k[1].T], axis=1)


def _eh_from(w, cfg):
    D = cfg.hidden_size
    return (np.stack([w[:, :D].T, w[:, D:].T]),)


def _glm4_moe_maps(cfg: ModelConfig) -> list[TensorMap]:
    """transformers' Glm4MoeForCausalLM (GLM-4.5, GLM-4.5-Air), plus the MTP layer the released
    checkpoints keep at index num_hidden_layers (which transformers skips on load): its embedding,
    enorm, hnorm, eh_proj, shared_head.{norm, head} and one more decoder layer."""
    one = _one(_same)
    maps = [TensorMap("model.embed_tokens.weight", (("embed", "embedding"),), _same, one)]
    if cfg.num_dense_layers:
        maps += _glm4_moe_layer(cfg, "model.layers.{i}.", ("layers",), moe=False)
    maps += _glm4_moe_layer(cfg, "model.layers.{i}.", ("moe_layers",), moe=True)
    maps += [TensorMap("model.norm.weight", (("final_norm", "scale"),), _same, one),
             TensorMap("lm_head.weight", (("output", "kernel"),), _t, _one(_t))]
    if cfg.mtp_layers:
        lp, mtp = f"model.layers.{cfg.num_layers}.", ("mtp",)
        maps += [TensorMap(lp + "embed_tokens.weight", (mtp + ("embed", "embedding"),), _same, one),
                 TensorMap(lp + "enorm.weight", (mtp + ("enorm", "scale"),), _same, one),
                 TensorMap(lp + "hnorm.weight", (mtp + ("hnorm", "scale"),), _same, one),
                 TensorMap(lp + "eh_proj.weight", (mtp + ("eh_proj", "kernel"),), _eh_to, _eh_from),
                 TensorMap(lp + "shared_head.norm.weight", (mtp + ("head_norm", "scale"),), _same, one),
                 TensorMap(lp + "shared_head.head.weight", (mtp + ("output", "kernel"),), _t, _one(_t))]
        maps += _glm4_moe_layer(cfg, lp, mtp + ("block",), moe=cfg.is_moe)
    return maps


def tensor_maps(cfg: ModelConfig, naming: str) -> list[TensorMap]:
    """The key map for `naming` ("hf" or "thudm")."""
    if naming not in NAMINGS:
        raise ConversionError(f"naming must be one of {NAMINGS}, got {naming!r}")
    if cfg.is_moe:
        if naming != "hf":
            raise ConversionError(f"config {cfg.name!r} is a mixture of experts (model.moe.num_experts="
                                  f"{cfg.moe.num_experts}, GLM-4.5), which THUDM's ChatGLM checkpoints cannot represent; "
                                  f"use naming 'hf' (--naming=hf, Glm4MoeForCausalLM)")
        return _glm4_moe_maps(cfg)
    wo = (_L + ("mlp", "wo", "kernel"),)
    if naming == "hf":
        lp = "model.layers.{i}."
        maps = [TensorMap("model.embed_tokens.weight", (("embed", "embedding"),), _same, _one(_same)),
                TensorMap(lp + "input_layernorm.weight", (_L + ("attn_norm", "scale"),), _same, _one(_same))]
        for n, attr in (("q", "num_heads"), ("k", "num_kv_heads"), ("v", "num_kv_heads")):
            maps.append(TensorMap(lp + f"self_attn.{n}_proj.weight", (_L + ("attn", n, "kernel"),), *_heads_in(attr)))
            if cfg.qkv_bias:
                maps.append(TensorMap(lp + f"self_attn.{n}_proj.bias", (_L + ("attn", n, "bias"),), *_bias_in(attr)))
        maps += [
            TensorMap(lp + "self_attn.o_proj.weight", (_L + ("attn", "o", "kernel"),), _o_to, _o_from),
            TensorMap(lp + "post_attention_layernorm.weight", (_L + ("mlp_norm", "scale"),), _same, _one(_same)),
            TensorMap(lp + "mlp.gate_up_proj.weight", (_L + ("mlp", "wi", "kernel"),), _wi_to, _wi_from),
            TensorMap(lp + "mlp.down_proj.weight", wo, _t, _one(_t)),
        ]
        if cfg.post_norms:  # Glm4ForCausalLM (GLM-4-0414)
            maps += [TensorMap(lp + "post_self_attn_layernorm.weight", (_L + ("attn_post_norm", "scale"),), _same,
                               _one(_same)),
                     TensorMap(lp + "post_mlp_layernorm.weight", (_L + ("mlp_post_norm", "scale"),), _same,
                               _one(_same))]
        maps += [
            TensorMap("model.norm.weight", (("final_norm", "scale"),), _same, _one(_same)),
            TensorMap("lm_head.weight", (("output", "kernel"),), _t, _one(_t)),
        ]
        return maps
    if cfg.post_norms:
        raise ConversionError(f"config {cfg.name!r} has model.post_norms=True (GLM-4-0414), which THUDM's ChatGLM "
                              f"checkpoints cannot represent; use naming 'hf' (--naming=hf, Glm4ForCausalLM)")
    lp = "transformer.encoder.layers.{i}."
    qkv = lambda leaf: tuple(_L + ("attn", n, leaf) for n in "qkv")  # noqa: E731
    maps = [TensorMap("transformer.embedding.word_embeddings.weight", (("embed", "embedding"),), _same, _one(_same)),
            TensorMap(lp + "input_layernorm.weight", (_L + ("attn_norm", "scale"),), _same, _one(_same)),
            TensorMap(lp + "self_attention.query_key_value.weight", qkv("kernel"), _qkv_to, _qkv_from)]
    if cfg.qkv_bias:
        maps.append(TensorMap(lp + "self_attention.query_key_value.bias", qkv("bias"), _qkv_to, _qkv_from))
    maps += [
        TensorMap(lp + "self_attention.dense.weight", (_L + ("attn", "o", "kernel"),), _o_to, _o_from),
        TensorMap(lp + "post_attention_layernorm.weight", (_L + ("mlp_norm", "scale"),), _same, _one(_same)),
        TensorMap(lp + "mlp.dense_h_to_4h.weight", (_L + ("mlp", "wi", "kernel"),), _wi_to, _wi_from),
        TensorMap(lp + "mlp.dense_4h_to_h.weight", wo, _t, _one(_t)),
        TensorMap("transformer.encoder.final_layernorm.weight", (("final_norm", "scale"),), _same, _one(_same)),
        TensorMap("transformer.output_layer.weight", (("output", "kernel"),), _t, _one(_t)),
    ]
    return maps


# Buffers some checkpoints carry that are derived, not learned (rotary inv_freq): ignored on import.
IGNORED_SUFFIXES = ("rotary_pos_emb.inv_freq", "rotary_emb.inv_freq")
THUDM_INV_FREQ = "transformer.rotary_pos_emb.inv_freq"


def derived_buffers(cfg: ModelConfig, naming: str, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """The derived tensors a released checkpoint of `naming` carries besides the learned ones.

    THUDM: `transformer.rotary_pos_emb.inv_freq` [R/2] (R = rotary dims = kv_channels / 2), the
    buffer THUDM's RotaryEmbedding registers: 1 / 10000^(2i / R) for i < R/2. Its forward
    takes only the dtype and device from it and builds its angles from rope_ratio, so this is
    carried for fidelity to the released file list, not read back."""
    if naming == "thudm":
        R = cfg.rotary_dim
        inv_freq = 1.0 / (10000.0 ** (np.arange(0, R, 2, dtype=np.float32) / R))
        yield THUDM_INV_FREQ, np.ascontiguousarray(inv_freq, dtype=dtype)


def _get(tree: Mapping, path: Path):
    for p in path:
        tree = tree[p]
    return tree


def _stack(path: Path, cfg: ModelConfig) -> tuple[int, int]:
    """(layers in the stack `path` belongs to, index of its first layer in the checkpoint)."""
    if path[0] == "moe_layers":
        return cfg.num_moe_layers, cfg.num_dense_layers
    return cfg.num_dense_layers, 0


def _expanded(maps: Sequence[TensorMap], cfg: ModelConfig) -> Iterator[tuple[str, TensorMap, int | None, int | None]]:
    """(external name, map, layer within its stack or None, expert or None) for every tensor."""
    for m in maps:
        layers = [None]
        if m.per_layer:
            n, first = _stack(m.leaves[0], cfg)
            layers = [(first, i) for i in range(n)]
        for li in layers:
            for e in (range(cfg.moe.num_experts) if m.per_expert else [None]):
                name = m.name.format(i=li[0] + li[1] if li else 0, e=e)
                yield name, m, (li[1] if li else None), e


def external_names(cfg: ModelConfig, naming: str) -> list[str]:
    """Every tensor name a checkpoint of this config holds, in export order."""
    return [name for name, *_ in _expanded(tensor_maps(cfg, naming), cfg)]


def external_shape(m: TensorMap, cfg: ModelConfig) -> tuple[int, ...]:
    """Shape of the external tensor of `m` (one layer's, one expert's, for per-layer / per-expert
    entries), from the spec tree."""
    specs = param_specs(cfg)
    drop = (1 if m.per_layer else 0) + (1 if m.per_expert else 0)
    leaves = [jax.ShapeDtypeStruct(_get(specs, p).shape[drop:], np.float32) for p in m.leaves]
    return tuple(jax.eval_shape(lambda *a: m.to_ext(*[m.piece(x) for x in a], cfg), *leaves).shape)


def export_tensors(params: Mapping | LeafReader, cfg: ModelConfig, naming: str,
                   dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (external name, contiguous numpy array, in `dtype` if given) one tensor at a time,
    so callers can stream to disk.

    `params` is the parameter tree or a `LeafReader`, asked for one layer of the stacked leaves
    at a time (once per map and layer: the experts of a layer come from one read). Tensors come
    map by map (all layers of one map, then the next)."""
    read = params if callable(params) else (lambda path, i: _get(params, path) if i is None else _get(params, path)[i])
    last: dict = {}

    def cached(path, i):  # the per-expert tensors of one layer share one read of the stacked leaf
        if last.get("key") != (path, i):
            last.clear()
            last.update(key=(path, i), value=np.asarray(read(path, i)))
        return last["value"]

    for name, m, i, e in _expanded(tensor_maps(cfg, naming), cfg):
        arrays = [cached(p, i) if m.per_expert else np.asarray(read(p, i)) for p in m.leaves]
        if e is not None:
            arrays = [a[e] for a in arrays]
        # No local keeps what was read alive while the caller holds the tensor.
        yield name, np.ascontiguousarray(m.to_ext(*[m.piece(a) for a in arrays], cfg), dtype=dtype)
    last.clear()


def import_reader(get_tensor: Callable[[str], np.ndarray], shapes: Mapping[str, tuple[int, ...]], cfg: ModelConfig,
                  naming: str) -> LeafReader:
    """Checks a checkpoint against the config, then returns a `LeafReader` over it.

    `shapes` maps every tensor name the checkpoint holds to its shape (from the file headers:
    nothing is read to check). Missing, unexpected and mis-shaped tensors raise `ConversionError`
    naming the tensor. The reader calls get_tensor(name) for the external tensors a leaf (or one
    layer of it) comes from and returns it in the spec's dtype."""
    specs = param_specs(cfg)
    maps = tensor_maps(cfg, naming)
    expanded = list(_expanded(maps, cfg))
    expected = [name for name, *_ in expanded]
    present = {n for n in shapes if not n.endswith(IGNORED_SUFFIXES)}
    missing = [n for n in expected if n not in present]
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} tensor(s) the config needs, first: {missing[0]!r} "
                              f"(naming={naming!r}, config {cfg.name!r}: {cfg.num_layers} layers"
                              + (f", {cfg.moe.num_experts} experts, mtp_layers={cfg.mtp_layers}" if cfg.is_moe else "")
                              + ")")
    unexpected = sorted(present - set(expected))
    if unexpected:
        raise ConversionError(f"checkpoint has {len(unexpected)} tensor(s) the config does not, first: "
                              f"{unexpected[0]!r} (naming={naming!r}, config {cfg.name!r}); is it the right config?"
                              + (" (an MTP layer at index num_layers needs model.mtp_layers=1)"
                                 if f"model.layers.{cfg.num_layers}." in unexpected[0] else ""))
    want = {m.name: external_shape(m, cfg) for m in maps}
    for name, m, _, _ in expanded:
        if tuple(shapes[name]) != want[m.name]:
            raise ConversionError(f"tensor {name!r} has shape {tuple(shapes[name])}, but config {cfg.name!r} "
                                  f"expects {want[m.name]}")
    sources: dict[Path, list[tuple[TensorMap, int]]] = {}
    for m in maps:
        for k, path in enumerate(m.leaves):
            sources.setdefault(path, []).append((m, k))

    def fill(out: np.ndarray, m: TensorMap, k: int, name: str):
        piece = m.from_ext(np.asarray(get_tensor(name)), cfg)[k]
        if m.index is None:
            out[...] = piece
        else:
            out[m.index] = piece

    def read(path, layer):
        spec = _get(specs, path)
        feeds = sources[path]
        if feeds[0][0].per_layer and layer is None:
            out = np.empty(spec.shape, spec.dtype)
            for i in range(spec.shape[0]):
                out[i] = read(path, i)
            return out
        out = np.empty(spec.shape[1:] if feeds[0][0].per_layer else spec.shape, spec.dtype)
        first = _stack(path, cfg)[1] if layer is not None else 0
        # A fused QKV tensor is read once per leaf it feeds: the file is in the page cache by then.
        for m, k in feeds:
            if m.per_expert:
                for e in range(cfg.moe.num_experts):
                    fill(out[e], m, k, m.name.format(i=first + (layer or 0), e=e))
            else:
                fill(out, m, k, m.name.format(i=first + (layer or 0)))
        return out

    return read


def read_tree(read: LeafReader, cfg: ModelConfig) -> dict:
    """The whole parameter tree, leaf by leaf, from a `LeafReader`."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: read(tuple(k.key for k in kp), None), param_specs(cfg))


def import_tensors(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, naming: str) -> dict:
    """Our whole parameter tree (numpy) from external tensors in memory; see `import_reader`."""
    return read_tree(import_reader(tensors.__getitem__, {n: t.shape for n, t in tensors.items()}, cfg, naming), cfg)
