"""The train state (step, params, optimizer state, RNG) and its shardings, born sharded.

`step` counts optimizer updates over the whole run: it continues across stages, so checkpoint
step numbers are unique within a workdir.

Mixed precision: the state always holds fp32 master params and fp32 Adam moments; bf16 compute
is `run.dtype=bfloat16` (every matmul casts its weight to it; norms, softmax, rotary and the
loss stay fp32). `model.param_dtype` other than float32 is refused for training: it would store
the weights and the moments in bf16 with no master copy, where an update smaller than 2^-8 of a
weight rounds away. Keeping an fp32 master under `param_dtype=bfloat16` instead would compute
exactly what `param_dtype=float32, dtype=bfloat16` computes, a second name for one thing.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from glm_jax import sharding
from glm_jax.config import Config, ConfigError
from glm_jax.model import spec


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: dict
    opt_state: Any
    rng: jax.Array  # uint32 raw key data (jax.random.key_data), for anything stochastic


def param_shardings(cfg: Config, mesh: jax.sharding.Mesh) -> dict:
    return sharding.tree_shardings(mesh, spec.param_specs(cfg.model))


def _new_state(params: dict, tx: optax.GradientTransformation, step, rng) -> TrainState:
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def _rng(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed))


def require_fp32_master(cfg: Config) -> None:
    """Refuses `model.param_dtype` != float32 for training (see the module docstring)."""
    if cfg.model.param_dtype != "float32":
        raise ConfigError("model.param_dtype",
                          f"{cfg.model.param_dtype!r} would train {cfg.model.param_dtype} weights and Adam moments "
                          f"with no fp32 master copy (updates below 2^-8 of a weight are lost); training keeps "
                          f"param_dtype=float32 and computes in bf16 with run.dtype=bfloat16")


def abstract_state(cfg: Config, tx: optax.GradientTransformation) -> TrainState:
    """ShapeDtypeStructs of the state (nothing allocated); every train path builds it first."""
    require_fp32_master(cfg)
    return jax.eval_shape(lambda: _new_state(spec.abstract_params(cfg.model), tx, 0, _rng(0)))


def state_shardings(cfg: Config, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation) -> TrainState:
    """Params shard by the rule table; optimizer moments follow their params; the rest replicates."""
    p_sh = param_shardings(cfg, mesh)
    rep = sharding.replicated(mesh)
    abstract = abstract_state(cfg, tx)
    params_def = jax.tree.structure(abstract.params)

    def params_like(x) -> bool:  # Adam's mu / nu (and any other per-param tree)
        return jax.tree.structure(x) == params_def

    opt_sh = jax.tree.map(lambda x: p_sh if params_like(x) else rep, abstract.opt_state, is_leaf=params_like)
    return TrainState(step=rep, params=p_sh, opt_state=opt_sh, rng=rep)


def sharded_abstract_state(cfg: Config, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation) -> TrainState:
    """Abstract state whose leaves carry their shardings (restore targets, AOT lowering)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state(cfg, tx), state_shardings(cfg, mesh, tx))


def init_state(cfg: Config, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation) -> TrainState:
    """Random params (`train.seed`) and a fresh optimizer, created directly in their shardings."""
    def init():
        key = jax.random.key(cfg.train.seed)
        return _new_state(spec.init_params(cfg.model, key), tx, 0, _rng(cfg.train.seed + 1))

    return jax.jit(init, out_shardings=state_shardings(cfg, mesh, tx))()


def state_from_params(cfg: Config, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation, params: dict,
                      step: int = 0) -> TrainState:
    """A fresh optimizer around given params (init_from, or a stage with optimizer_state=reset)."""
    sh = state_shardings(cfg, mesh, tx)
    fn = jax.jit(lambda p: _new_state(p, tx, step, _rng(cfg.train.seed + 1)), in_shardings=(sh.params,),
                 out_shardings=sh)
    return fn(params)
