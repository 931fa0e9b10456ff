"""Every cross-field check of a run, called in one place, before anything is loaded or compiled.

Single fields are checked where the config is parsed (glm_jax/config.py). What needs more than
one field, the devices, the process count or the workdir is checked here; a rule that code at
trace time relies on is stated once beside that code and called from here too
(`attention.check_backend`, `expert_parallel.check_dispatch_tokens`):

    check_run(stages, workdir, num_devices=, num_processes=)   the train CLI / loop
    check_stage(cfg, mesh_sizes, num_processes=)               one stage on a mesh (also aot)

Every refusal is a `ConfigError` naming the field to change (`stages.<name>.` first when the
run has stages), or a `StorageError` naming the path.
"""

from __future__ import annotations

import jax

from glm_jax import config as config_lib
from glm_jax import sharding, storage
from glm_jax.config import Config, ConfigError, ModelConfig
from glm_jax.model import attention, expert_parallel, spec
from glm_jax.train import checkpoint as ckpt_lib


def check_stage(cfg: Config, mesh_sizes: dict[str, int], num_processes: int = 1) -> None:
    """Does the model and batch divide over the mesh, and can every process be fed?"""
    m, r, t = cfg.model, cfg.run, cfg.train
    if m.num_heads % mesh_sizes["tensor"]:
        raise ConfigError("mesh.tensor", f"model.num_heads={m.num_heads} is not divisible by the tensor axis "
                          f"({mesh_sizes['tensor']}); use a tensor size that divides it")
    for field, dim in (("ffn_hidden_size", m.ffn_hidden_size), ("vocab_size", m.vocab_size)):
        if dim % mesh_sizes["tensor"]:
            raise ConfigError("mesh.tensor", f"model.{field}={dim} is not divisible by the tensor axis "
                              f"({mesh_sizes['tensor']})")
    if m.is_moe:
        X = m.moe.num_experts
        if X % mesh_sizes["expert"]:
            raise ConfigError("mesh.expert", f"model.moe.num_experts={X} is not divisible by the expert axis "
                              f"({mesh_sizes['expert']}); valid: {[e for e in range(1, X + 1) if X % e == 0]}")
        if m.moe.ffn_hidden_size % mesh_sizes["tensor"]:
            raise ConfigError("mesh.tensor", f"model.moe.ffn_hidden_size={m.moe.ffn_hidden_size} is not divisible "
                              f"by the tensor axis ({mesh_sizes['tensor']})")
    elif mesh_sizes["expert"] > 1:
        raise ConfigError("mesh.expert", f"is {mesh_sizes['expert']} but config {m.name!r} has no experts "
                          f"(model.moe.num_experts=0); leave mesh.expert=1")
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
    if m.is_moe and mesh_sizes["expert"] > 1:
        tokens = micro // rows * t.seq_len // mesh_sizes["sequence"]  # a device's tokens in one micro-batch
        expert_parallel.check_dispatch_tokens(r.moe_dispatch_tokens, tokens)
    attention.check_backend(r, t.seq_len, mesh_sizes["sequence"])


def _changed_fields(old: Config, new: Config) -> list[str]:
    return [f"{name} ({a!r} there, {b!r} now)" for name, (a, b) in config_lib.differences(old, new).items()
            if not config_lib.is_resumable(name)]


def _param_shape_differences(src: ModelConfig, dst: ModelConfig) -> str:
    """'' when both models have the same parameter tree and shapes (the spec trees, no weights);
    else which model fields and parameters differ."""
    shapes = [jax.tree.map(lambda s: s.shape, spec.param_specs(c), is_leaf=spec.is_spec) for c in (src, dst)]
    if shapes[0] == shapes[1]:
        return ""
    fields = [f"{k} ({a} there, {b} here)" for k, (a, b) in config_lib.differences(src, dst, "model").items()]
    return ", ".join(fields) or "the parameter shapes"


def _has_checkpoints(workdir: str) -> bool:
    root = storage.join(workdir, "checkpoints")
    return any(name.isdigit() for stage in storage.listdir(root) for name in storage.listdir(storage.join(root, stage)))


def check_same_run(workdir: str, stages: list[tuple[str, Config]]) -> None:
    """A workdir holding another run's config.json is refused: resuming it with a different model,
    data or optimizer would mix two runs. Stages may be appended; only resumable fields
    (`config.is_resumable`: the run, mesh and checkpoint sections and a few declared fields) may differ.
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
    differ = _param_shape_differences(ckpt_lib.read_stages(path)[-1][1].model, cfg.model)
    if differ:
        raise ConfigError("train.init_from", f"{path} holds a model whose parameters differ from this one's: {differ}")


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
    differ = _param_shape_differences(src, cfg.model)
    if differ:
        raise ConfigError("dpo.reference", f"{path} holds a model whose parameters differ from this one's: {differ}")


def check_stages(stages: list[tuple[str, Config]], *, num_devices: int, num_processes: int) -> None:
    """check_stage for every stage on `num_devices`; errors carry `stages.<name>.` when there are stages."""
    for i, (name, cfg) in enumerate(stages):
        try:
            sizes = sharding.mesh_shape(cfg.mesh, num_devices)
            check_stage(cfg, sizes, num_processes)
            if i == 0:
                check_init_from(cfg)
            check_reference(cfg, first=i == 0)
            if cfg.eval.every_steps:  # every task it evaluates has held-out data
                from glm_jax.data.loader import heldout_tasks  # noqa: PLC0415 (imports TensorFlow)

                heldout_tasks(cfg)
            if cfg.eval.every_steps and cfg.eval.seqio_tasks:
                from glm_jax.eval.seqio_eval import check_config  # noqa: PLC0415

                check_config(cfg, num_processes)
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
