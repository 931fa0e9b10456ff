"""The declared key map between our parameter tree and PyTorch checkpoints.

Two namings:
  "hf"    transformers' `GlmForCausalLM` (model.layers.N.self_attn.q_proj, mlp.gate_up_proj, ...), or
          `Glm4ForCausalLM` with `post_norms` (GLM-4-0414: + post_self_attn_layernorm, post_mlp_layernorm)
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
    name: str  # external name; "{i}" is the layer index for per-layer entries
    leaves: tuple[Path, ...]  # our leaves (paths into the param tree)
    to_ext: Callable[..., np.ndarray]  # (*our arrays, cfg) -> external array
    from_ext: Callable[..., tuple[np.ndarray, ...]]  # (external array, cfg) -> our arrays

    def __post_init__(self):
        stacked = {is_stacked(p) for p in self.leaves}
        if len(stacked) != 1 or stacked.pop() != ("{i}" in self.name):
            raise AssertionError(f"key map entry {self.name!r}: a per-layer name ('{{i}}') must map to stacked "
                                 f"leaves only, and only those: {self.leaves}")

    @property
    def per_layer(self) -> bool:
        return is_stacked(self.leaves[0])


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


def tensor_maps(cfg: ModelConfig, naming: str) -> list[TensorMap]:
    """The key map for `naming` ("hf" or "thudm")."""
    if naming not in NAMINGS:
        raise ConversionError(f"naming must be one of {NAMINGS}, got {naming!r}")
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


def _expanded(maps: Sequence[TensorMap], cfg: ModelConfig) -> Iterator[tuple[str, TensorMap, int | None]]:
    for m in maps:
        if m.per_layer:
            for i in range(cfg.num_layers):
                yield m.name.format(i=i), m, i
        else:
            yield m.name, m, None


def external_names(cfg: ModelConfig, naming: str) -> list[str]:
    """Every tensor name a checkpoint of this config holds, in export order."""
    return [name for name, _, _ in _expanded(tensor_maps(cfg, naming), cfg)]


def external_shape(m: TensorMap, cfg: ModelConfig) -> tuple[int, ...]:
    """Shape of the external tensor of `m` (one layer's, for per-layer entries), from the spec tree."""
    specs = param_specs(cfg)
    leaves = [jax.ShapeDtypeStruct(_get(specs, p).shape[1 if m.per_layer else 0:], np.float32) for p in m.leaves]
    return tuple(jax.eval_shape(lambda *a: m.to_ext(*a, cfg), *leaves).shape)


def export_tensors(params: Mapping | LeafReader, cfg: ModelConfig, naming: str,
                   dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (external name, contiguous numpy array, in `dtype` if given) one tensor at a time,
    so callers can stream to disk.

    `params` is the parameter tree or a `LeafReader`, asked for one layer of the stacked leaves
    at a time. Tensors come map by map (all layers of one map, then the next)."""
    read = params if callable(params) else (lambda path, i: _get(params, path) if i is None else _get(params, path)[i])
    for name, m, i in _expanded(tensor_maps(cfg, naming), cfg):
        # No local keeps what was read alive while the caller holds the tensor.
        yield name, np.ascontiguousarray(m.to_ext(*[np.asarray(read(p, i)) for p in m.leaves], cfg), dtype=dtype)


def import_reader(get_tensor: Callable[[str], np.ndarray], shapes: Mapping[str, tuple[int, ...]], cfg: ModelConfig,
                  naming: str) -> LeafReader:
    """Checks a checkpoint against the config, then returns a `LeafReader` over it.

    `shapes` maps every tensor name the checkpoint holds to its shape (from the file headers:
    nothing is read to check). Missing, unexpected and mis-shaped tensors raise `ConversionError`
    naming the tensor. The reader calls get_tensor(name) for the external tensors a leaf (or one
    layer of it) comes from and returns it in the spec's dtype."""
    specs = param_specs(cfg)
    maps = tensor_maps(cfg, naming)
    expected = external_names(cfg, naming)
    present = {n for n in shapes if not n.endswith(IGNORED_SUFFIXES)}
    missing = [n for n in expected if n not in present]
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} tensor(s) the config needs, first: {missing[0]!r} "
                              f"(naming={naming!r}, config {cfg.name!r}: {cfg.num_layers} layers)")
    unexpected = sorted(present - set(expected))
    if unexpected:
        raise ConversionError(f"checkpoint has {len(unexpected)} tensor(s) the config does not, first: "
                              f"{unexpected[0]!r} (naming={naming!r}, config {cfg.name!r}); is it the right config?")
    want = {m.name: external_shape(m, cfg) for m in maps}
    for name, m, _ in _expanded(maps, cfg):
        if tuple(shapes[name]) != want[m.name]:
            raise ConversionError(f"tensor {name!r} has shape {tuple(shapes[name])}, but config {cfg.name!r} "
                                  f"expects {want[m.name]}")
    source = {path: (m, k) for m in maps for k, path in enumerate(m.leaves)}

    def read(path, layer):
        m, k = source[path]
        spec = _get(specs, path)
        if m.per_layer and layer is None:
            out = np.empty(spec.shape, spec.dtype)
            for i in range(cfg.num_layers):
                out[i] = read(path, i)
            return out
        # A fused QKV tensor is read once per leaf it feeds: the file is in the page cache by then.
        ext = np.asarray(get_tensor(m.name.format(i=layer)))
        return m.from_ext(ext, cfg)[k].astype(spec.dtype, copy=False)

    return read


def read_tree(read: LeafReader, cfg: ModelConfig) -> dict:
    """The whole parameter tree, leaf by leaf, from a `LeafReader`."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: read(tuple(k.key for k in kp), None), param_specs(cfg))


def import_tensors(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, naming: str) -> dict:
    """Our whole parameter tree (numpy) from external tensors in memory; see `import_reader`."""
    return read_tree(import_reader(tensors.__getitem__, {n: t.shape for n, t in tensors.items()}, cfg, naming), cfg)
