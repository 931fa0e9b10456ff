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
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from glm_jax.config import ConfigError, MeshConfig

MESH_AXES = ("data", "fsdp", "expert", "sequence", "tensor")

# One rule per logical axis. Params shard their `embed` dim over fsdp (ZeRO-3 style) and their
# head/mlp/vocab dims over tensor (Megatron style); activations shard batch over data x fsdp and
# sequence over the context-parallel axis. Activations leave their embed dim unsharded (None).
# Expert parallelism: routed experts split over `expert`, which also splits the batch rows (outside
# the MoE blocks it is one more data-parallel axis; inside them tokens travel to their experts by
# all-to-all, glm_jax.model.moe). Every other weight (attention, router, shared expert, embeddings)
# shards its embed dim over fsdp x expert, so it is split over all the devices that split the batch
# (ZeRO-3 over both): with `embed` over fsdp only, GLM-4.5's 22B dense parameters and their Adam
# moments would be held 32 times on an expert=32 mesh. Routed experts' own embed dim
# (`expert_embed`) is over fsdp, `expert` being taken by their experts dim. With expert=1 (the
# default) none of this changes anything.
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp", "expert"),
    "experts": ("expert",),
    "seq": ("sequence",),
    "embed": ("fsdp", "expert"),
    "expert_embed": ("fsdp",),
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
    """The (data, fsdp, expert, sequence, tensor) mesh over `devices` (default all), laid onto the
    physical torus by `jax.make_mesh`. A mesh axis that is no product of whole physical axes
    (expert=32 on a v5p 4x4x4) gets a physical axis split between mesh axes instead of an error."""
    devices = list(devices) if devices is not None else jax.devices()
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=axis_types)
    except NotImplementedError:  # mesh_utils: "Failed to find assignment for logical_axis_index ..."
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


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
    """NamedSharding of an array of `shape`; a dim is split over the longest leading run of its
    mesh axes whose product divides it, and stays replicated if none does (e.g. GLM-4's 2 kv heads
    on a tensor axis of 4: K/V weights replicate, Q still shards; an embed dim fsdp x expert do
    not divide: over fsdp alone)."""
    spec = []
    for dim, entry in zip(shape, logical_to_spec(logical_axes)):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept = tuple(a for a in axes if mesh.shape[a] > 1)
        while kept and dim % math.prod(mesh.shape[a] for a in kept):
            kept = kept[:-1]
        spec.append(None if not kept else (kept if len(kept) > 1 else kept[0]))
    return NamedSharding(mesh, P(*spec))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names, as `sharding_for` lays such an array out (so the
    output kernel's gradient lands like the kernel); a no-op when no mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, sharding_for(mesh, x.shape, logical_axes))


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


def host_rows(mesh: jax.sharding.Mesh, global_rows: int, seq_len: int) -> tuple[list[int], list[int]]:
    """(rows, owned) of this process for a [global_rows, seq_len] batch field.

    `rows`: the global rows any of this process's devices holds a slice of (sorted); the data
    iterator reads exactly these. With batch rows split over more devices than there are rows,
    or the sequence/tensor axes spanning processes, several processes hold (parts of) one row
    and each reads it. `owned`: the rows this process is the lowest-index holder of; it alone
    writes their data-iterator state into checkpoints."""
    shape = (global_rows, seq_len)
    holders: dict[int, set[int]] = {}
    for device, index in batch_sharding(mesh, shape).devices_indices_map(shape).items():
        for r in range(*index[0].indices(global_rows)):
            holders.setdefault(r, set()).add(device.process_index)
    me = jax.process_index()
    rows = sorted(r for r, procs in holders.items() if me in procs)
    return rows, [r for r in rows if min(holders[r]) == me]


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh, global_rows: int,
                 rows: Sequence[int] | None = None) -> dict[str, jax.Array]:
    """Global [global_rows, T] arrays sharded by `batch_sharding` from this process's rows.

    `local[name]` is [len(rows), T]: row i is global row rows[i] (`host_rows`' rows; all rows
    when None, i.e. one process). Each local device gets its slice of those rows, so a row may
    be shared by several processes and split along T (multi-host aware)."""
    rows = list(range(global_rows)) if rows is None else list(rows)
    where = {r: i for i, r in enumerate(rows)}
    out = {}
    for name, x in local.items():
        x = np.asarray(x)
        shape = (global_rows, *x.shape[1:])

        def piece(index, x=x):
            start, stop, _ = index[0].indices(global_rows)
            first = where[start]  # a device's rows are one contiguous range, all in `rows`
            return x[(slice(first, first + stop - start), *index[1:])]

        out[name] = jax.make_array_from_callback(shape, batch_sharding(mesh, shape), piece)
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
