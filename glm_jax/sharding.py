"""One mesh, one rule table.

Every parameter and activation names its dims with logical axes (see `LOGICAL_RULES`); the
table maps each logical axis onto mesh axes of the mesh (data, fsdp, sequence, tensor). Changing
the parallelism of a run is a config change (`--config.mesh.tensor=2`), never a code change.

Activations are constrained with `constrain(x, axes)`, which is a no-op when no mesh is set
(`jax.set_mesh`), so the model runs unchanged on one device.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from glm_jax.config import ConfigError, Config, MeshConfig

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# One rule per logical axis. Params shard their `embed` dim over fsdp (ZeRO-3 style) and their
# head/mlp/vocab dims over tensor (Megatron style); activations shard batch over data x fsdp and
# sequence over the context-parallel axis. Activations leave their embed dim unsharded (None).
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "seq": ("sequence",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "layers": (),
}


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> dict[str, int]:
    """Resolves a -1 axis to the remaining devices and checks the product equals `num_devices`."""
    sizes = {a: getattr(mesh_cfg, a) for a in MESH_AXES}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    fill = [a for a, v in sizes.items() if v == -1]
    if fill:
        if num_devices % fixed:
            raise ConfigError(f"mesh.{fill[0]}", f"cannot fill: {num_devices} devices are not divisible by "
                              f"the other axes' product {fixed} ({sizes})")
        sizes[fill[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ConfigError("mesh", f"product of {sizes} is {math.prod(sizes.values())}, but there are "
                          f"{num_devices} devices; make the product equal the device count or set one axis to -1")
    return sizes


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    sizes = mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None]) -> P:
    """PartitionSpec for dims named by logical axes; raises if two dims land on one mesh axis."""
    used: dict[str, str] = {}
    out = []
    for name in logical_axes:
        if name is None:
            out.append(None)
            continue
        if name not in LOGICAL_RULES:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(LOGICAL_RULES)}")
        mesh_axes = LOGICAL_RULES[name]
        for m in mesh_axes:
            if m in used:
                raise ValueError(f"logical axes {tuple(logical_axes)}: {name!r} and {used[m]!r} both map to "
                                 f"mesh axis {m!r}")
            used[m] = name
        out.append(mesh_axes if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
    return P(*out)


def sharding_for(mesh: jax.sharding.Mesh, shape: Sequence[int], logical_axes: Sequence[str | None]) -> NamedSharding:
    """NamedSharding of an array of `shape`; a dim its mesh axes do not divide stays replicated
    (e.g. GLM-4's 2 kv heads on a tensor axis of 4: K/V weights replicate, Q still shards)."""
    spec = []
    for dim, entry in zip(shape, logical_to_spec(logical_axes)):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept = tuple(a for a in axes if mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in kept)
        spec.append(None if not kept or dim % size else (kept if len(kept) > 1 else kept[0]))
    return NamedSharding(mesh, P(*spec))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op when no mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical_axes)))


def validate_for_mesh(cfg: Config, mesh_sizes: dict[str, int]) -> None:
    """Checks, before any compile, that the model and batch divide evenly over the mesh."""
    m, t = cfg.model, cfg.train
    if m.num_heads % mesh_sizes["tensor"]:
        raise ConfigError("mesh.tensor", f"model.num_heads={m.num_heads} is not divisible by the tensor axis "
                          f"({mesh_sizes['tensor']}); use a tensor size that divides it")
    for field, dim in (("ffn_hidden_size", m.ffn_hidden_size), ("vocab_size", m.vocab_size)):
        if dim % mesh_sizes["tensor"]:
            raise ConfigError("mesh.tensor", f"model.{field}={dim} is not divisible by the tensor axis "
                              f"({mesh_sizes['tensor']})")
    if m.hidden_size % mesh_sizes["fsdp"]:
        raise ConfigError("mesh.fsdp", f"model.hidden_size={m.hidden_size} is not divisible by the fsdp axis "
                          f"({mesh_sizes['fsdp']})")
    rows = mesh_sizes["data"] * mesh_sizes["fsdp"]
    micro = t.batch_size // t.grad_accum
    if micro % rows:
        raise ConfigError("train.batch_size", f"the micro-batch batch_size/grad_accum = {micro} is not divisible "
                          f"by data x fsdp = {rows}; use a multiple of {rows * t.grad_accum}")
    block = m.attention_block_q if m.attention != "reference" else 1
    # Context parallelism cuts the sequence into 2 chunks per sequence shard (load balancing).
    chunks = 2 * mesh_sizes["sequence"] if mesh_sizes["sequence"] > 1 else 1
    if t.seq_len % (chunks * block):
        raise ConfigError("train.seq_len", f"seq_len={t.seq_len} must be a multiple of {chunks * block}: "
                          f"{'2 x sequence axis (' + str(mesh_sizes['sequence']) + ')' if chunks > 1 else '1'} "
                          f"x attention block ({block})")
    if mesh_sizes["sequence"] > 1 and m.attention == "splash":
        raise ConfigError("model.attention", "splash has no context-parallel path; use flash or reference with "
                          "mesh.sequence > 1")


# ---------------------------------------------------------------------------------------------
# Trees, batches and the embedding lookup
# ---------------------------------------------------------------------------------------------

BATCH_AXES = ("batch", "seq")  # every [B, T] input (tokens, targets, positions, segment ids, masks)


def tree_shardings(mesh: jax.sharding.Mesh, spec_tree: Any) -> Any:
    """NamedSharding per leaf of a spec tree (leaves carry `.shape` and `.logical_axes`, e.g. the
    model's ParamSpec tree)."""
    return jax.tree.map(lambda s: sharding_for(mesh, s.shape, s.logical_axes), spec_tree,
                        is_leaf=lambda x: hasattr(x, "logical_axes"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh, shape: Sequence[int]) -> NamedSharding:
    """Sharding of a [B, T] batch field: rows over data x fsdp, positions over sequence."""
    return sharding_for(mesh, shape, BATCH_AXES)


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh, global_rows: int) -> dict[str, jax.Array]:
    """Assembles each host's rows (every field [global_rows / process_count, T]) into global
    [global_rows, T] arrays sharded by `batch_sharding` (multi-host aware)."""
    out = {}
    for name, x in local.items():
        shape = (global_rows, *x.shape[1:])
        out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, shape), np.asarray(x), shape)
    return out


def _divisible_spec(mesh, shape: Sequence[int], logical_axes: Sequence[str | None]) -> P:
    return sharding_for(mesh, shape, logical_axes).spec


def embed_lookup(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """table [V, D], tokens [B, T] int -> [B, T, D], the same numbers as `table[tokens]`.

    With the table sharded (vocab->tensor, embed->fsdp) and tokens sharded over batch, a plain
    gather makes XLA's partitioner fully rematerialise the result ("Involuntary full
    rematerialization"). Instead each tensor shard looks up the tokens that fall in its slice of
    the vocabulary (zeros elsewhere) and one psum over `tensor` combines them: the table's embed
    dim is all-gathered like every other FSDP weight, and nothing else moves. Adding zeros keeps
    the result bit-identical to the plain gather."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return table[tokens]
    V = table.shape[0]
    tensor = mesh.shape["tensor"]
    if tensor == 1 or V % tensor:  # the vocab is not split: the plain gather partitions fine
        return table[tokens]
    tok_spec = _divisible_spec(mesh, tokens.shape, BATCH_AXES)

    def local(tab, tok):  # tab [V / tensor, D] (full D), tok [B', T'] -> [B', T', D]
        rows = tab.shape[0]
        idx = tok - jax.lax.axis_index("tensor") * rows
        inside = (idx >= 0) & (idx < rows)
        x = jnp.where(inside[..., None], tab[jnp.clip(idx, 0, rows - 1)], jnp.zeros((), tab.dtype))
        return jax.lax.psum(x, "tensor")

    return jax.shard_map(local, mesh=mesh, in_specs=(P("tensor", None), tok_spec),
                         out_specs=P(*tok_spec, None))(table, tokens)
