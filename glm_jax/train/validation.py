"""Every cross-field check of a run, in one place, before anything is loaded or compiled.

Single fields are checked where the config is parsed (glm_jax/config.py). What needs more than
one field, the devices, the process count or the workdir is checked here:

    check_run(stages, workdir, num_devices=, num_processes=)   the train CLI / loop
    check_stage(cfg, mesh_sizes, num_processes=)               one stage on a mesh (also aot)

Every refusal is a `ConfigError` naming the field to change (`stages.<name>.` first when the
run has stages), or a `StorageError` naming the path.
"""

from __future__ import annotations

import dataclasses

from glm_jax import sharding, storage
from glm_jax.config import Config, ConfigError
from glm_jax.train import checkpoint as ckpt_lib

# Fields a resumed run may change: how it runs, not what it computes (parallelism, logging,
# checkpoint cadence, kernels with the same numbers, data reader threads, steps to go).
RESUMABLE_CHANGES = {
    "mesh": None,  # every field
    "checkpoint": None,
    "train": {"steps", "log_every", "peak_tflops"},
    "model": {"attention", "attention_block_q", "attention_block_kv", "attention_interpret", "scan_layers", "remat"},
    "data": {"num_workers", "read_threads", "cache_dir"},
}
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "kv_groups", "head_dim", "ffn_hidden_size",
                "qkv_bias", "post_norms", "qk_norm", "num_experts", "moe_ffn_hidden_size", "num_shared_experts",
                "first_dense_layers", "mtp_layers")


def check_stage(cfg: Config, mesh_sizes: dict[str, int], num_processes: int = 1) -> None:
    """Does the model and batch divide over the mesh, and can every process be fed?"""
    m, t = cfg.model, cfg.train
    if m.num_heads % mesh_sizes["tensor"]:
        raise ConfigError("mesh.tensor", f"model.num_heads={m.num_heads} is not divisible by the tensor axis "
                          f"({mesh_sizes['tensor']}); use a tensor size that divides it")
    for field, dim in (("ffn_hidden_size", m.ffn_hidden_size), ("vocab_size", m.vocab_size)):
        if dim % mesh_sizes["tensor"]:
            raise ConfigError("mesh.tensor", f"model.{field}={dim} is not divisible by the tensor axis "
                              f"({mesh_sizes['tensor']})")
    if m.is_moe:
        if m.num_experts % mesh_sizes["expert"]:
            raise ConfigError("mesh.expert", f"model.num_experts={m.num_experts} is not divisible by the expert axis "
                              f"({mesh_sizes['expert']}); valid: "
                              f"{[e for e in range(1, m.num_experts + 1) if m.num_experts % e == 0]}")
        if m.moe_ffn_hidden_size % mesh_sizes["tensor"]:
            raise ConfigError("mesh.tensor", f"model.moe_ffn_hidden_size={m.moe_ffn_hidden_size} is not divisible "
                              f"by the tensor axis ({mesh_sizes['tensor']})")
    elif mesh_sizes["expert"] > 1:
        raise ConfigError("mesh.expert", f"is {mesh_sizes['expert']} but config {m.name!r} has no experts "
                          f"(model.num_experts=0); leave mesh.expert=1")
    if m.hidden_size % mesh_sizes["fsdp"]:
        raise ConfigError("mesh.fsdp", f"model.hidden_size={m.hidden_size} is not divisible by the fsdp axis "
                          f"({mesh_sizes['fsdp']})")
    rows = mesh_sizes["data"] * mesh_sizes["fsdp"] * mesh_sizes["expert"]
    micro = t.batch_size // t.grad_accum
    if micro % rows:
        raise ConfigError("train.batch_size", f"the micro-batch batch_size/grad_accum = {micro} is not divisible "
                          f"by data x fsdp x expert = {rows}; use a multiple of {rows * t.grad_accum}, or move devices "
                          f"to mesh.sequence / mesh.tensor (rows may then span processes: "
                          f"{num_processes} process(es) here)")
    tokens = micro // rows * t.seq_len // mesh_sizes["sequence"]  # a device's tokens in one micro-batch
    if m.is_moe and mesh_sizes["expert"] > 1 and 0 < m.moe_dispatch_tokens < tokens and tokens % m.moe_dispatch_tokens:
        raise ConfigError("model.moe_dispatch_tokens", f"{m.moe_dispatch_tokens} must divide the {tokens} tokens "
                          f"each device holds (micro-batch rows x seq_len per device); valid: "
                          f"{[d for d in range(1, tokens + 1) if tokens % d == 0][-8:]} or 0 (all at once)")
    block = m.attention_block_q if m.attention in ("flash", "splash") else 1  # the Pallas kernels tile queries
    # Context parallelism cuts the sequence into 2 chunks per sequence shard (load balancing).
    chunks = 2 * mesh_sizes["sequence"] if mesh_sizes["sequence"] > 1 else 1
    if t.seq_len % (chunks * block):
        raise ConfigError("train.seq_len", f"seq_len={t.seq_len} must be a multiple of {chunks * block}: "
                          f"{'2 x sequence axis (' + str(mesh_sizes['sequence']) + ')' if chunks > 1 else '1'} "
                          f"x attention block ({block})")
    if mesh_sizes["sequence"] > 1 and m.attention in ("splash", "dot_product"):
        raise ConfigError("model.attention", f"{m.attention} has no context-parallel path; use flash or reference "
                          f"with mesh.sequence > 1")


def _changed_fields(old: Config, new: Config) -> list[str]:
    changed = []
    for section in ("model", "mesh", "train", "checkpoint", "data", "dpo"):
        a, b = dataclasses.asdict(getattr(old, section)), dataclasses.asdict(getattr(new, section))
        allowed = RESUMABLE_CHANGES.get(section, set())
        changed += [f"{section}.{k} ({a[k]!r} there, {b[k]!r} now)" for k in a
                    if a[k] != b[k] and allowed is not None and k not in allowed]
    return changed


def _has_checkpoints(workdir: str) -> bool:
    root = storage.join(workdir, "checkpoints")
    return any(name.isdigit() for stage in storage.listdir(root) for name in storage.listdir(storage.join(root, stage)))


def check_same_run(workdir: str, stages: list[tuple[str, Config]]) -> None:
    """A workdir holding another run's config.json is refused: resuming it with a different model,
    data or optimizer would mix two runs. Stages may be appended; only RESUMABLE_CHANGES may differ.
    A workdir without any checkpoint yet takes the new config."""
    recorded = ckpt_lib.read_stages_if_any(workdir)
    if recorded is None or not _has_checkpoints(workdir):  # nothing trained yet: nothing to mix up
        return
    names_then, names_now = [n for n, _ in recorded], [n for n, _ in stages]
    if names_now[:len(names_then)] != names_then:
        raise ConfigError("stage_order", f"{workdir} holds a run with stages {names_then}; this config has "
                          f"{names_now} (stages may only be appended). Use a new --workdir for a different run")
    for (name, old), (_, new) in zip(recorded, stages):
        changed = _changed_fields(old, new)
        if changed:
            where = f"stages.{name}" if len(stages) > 1 else "workdir"
            raise ConfigError(where, f"{workdir} holds a different run: {'; '.join(changed)}. Use a new --workdir, "
                              f"or rerun with the recorded values ({storage.join(workdir, ckpt_lib.CONFIG_FILE)})")


def check_init_from(cfg: Config) -> None:
    path = cfg.train.init_from
    if not path:
        return
    if not ckpt_lib.is_params_checkpoint(path):
        raise ConfigError("train.init_from", f"{path!r} is not a params-only checkpoint "
                          f"(expected {storage.join(path, 'params')}, written by checkpoint.save_params)")
    src = ckpt_lib.read_stages(path)[-1][1].model
    differ = sorted(f for f in SHAPE_FIELDS if getattr(src, f) != getattr(cfg.model, f))
    if differ:
        raise ConfigError("train.init_from", f"{path} holds a model that differs in "
                          + ", ".join(f"{f} ({getattr(src, f)} there, {getattr(cfg.model, f)} here)" for f in differ))


def check_reference(cfg: Config, first: bool) -> None:
    """A DPO stage needs a reference policy: dpo.reference, or params it starts from (a previous
    stage, or train.init_from for the first stage); a given one must hold this model's shapes."""
    if cfg.train.objective != "dpo":
        return
    path = cfg.dpo.reference
    if not path:
        if first and not cfg.train.init_from:
            raise ConfigError("dpo.reference", "a DPO stage needs a reference policy: run it after an SFT stage "
                              "(its last checkpoint is the reference), or set train.init_from (the params it starts "
                              "from and the reference) or dpo.reference (a params checkpoint or training workdir)")
        return
    try:
        src = ckpt_lib.read_stages(path)[-1][1].model
    except FileNotFoundError as e:
        raise ConfigError("dpo.reference", f"{path!r}: {e}") from None
    differ = sorted(f for f in SHAPE_FIELDS if getattr(src, f) != getattr(cfg.model, f))
    if differ:
        raise ConfigError("dpo.reference", f"{path} holds a model that differs in "
                          + ", ".join(f"{f} ({getattr(src, f)} there, {getattr(cfg.model, f)} here)" for f in differ))


def check_stages(stages: list[tuple[str, Config]], *, num_devices: int, num_processes: int) -> None:
    """check_stage for every stage on `num_devices`; errors carry `stages.<name>.` when there are stages."""
    for i, (name, cfg) in enumerate(stages):
        try:
            sizes = sharding.mesh_shape(cfg.mesh, num_devices)
            check_stage(cfg, sizes, num_processes)
            if i == 0:
                check_init_from(cfg)
            check_reference(cfg, first=i == 0)
        except ConfigError as e:
            if len(stages) == 1:
                raise
            raise ConfigError(f"stages.{name}.{e.field}", str(e).split(": ", 1)[1]) from None


def check_run(stages: list[tuple[str, Config]], workdir: str, *, num_devices: int, num_processes: int) -> None:
    """Everything a run needs before it loads or compiles anything: the workdir can be written and
    holds no other run, and every stage fits the devices and processes."""
    check_stages(stages, num_devices=num_devices, num_processes=num_processes)
    storage.check_writable(workdir, "--workdir")
    check_same_run(workdir, stages)
