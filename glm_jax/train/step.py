"""The jitted train step: forward, loss, gradient accumulation, clipping, AdamW; state donated.

    step_fn = make_train_step(cfg, mesh, stage_start)
    with jax.set_mesh(mesh):
        state, metrics = step_fn(state, batch)                # train.objective=lm
        state, metrics = step_fn(state, batch, ref_params)    # train.objective=dpo (glm_jax/train/dpo.py)

`ref_params`, the frozen DPO reference, is sharded like the params and neither differentiated
nor donated: the step only reads it.

A batch is a dict of [B, T] arrays (BATCH_FIELDS), B = train.batch_size (global rows).
With `train.grad_accum = A` the rows are split into A micro-batches of B/A rows (row r goes to
micro-batch r mod A, so every micro-batch stays evenly sharded) that run under `lax.scan`;
summed losses and gradients are divided by the whole batch's weight, so the update equals the
one-shot batch of B rows.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from glm_jax import sharding
from glm_jax.config import Config
from glm_jax.model import hidden_states_and_stats, output_logits
from glm_jax.train import balance
from glm_jax.train import dpo as dpo_lib
from glm_jax.train import loss as loss_lib
from glm_jax.train import optimizer as opt_lib
from glm_jax.train.state import TrainState, state_shardings

BATCH_FIELDS = {"tokens": "int32", "targets": "int32", "positions": "int32", "segment_ids": "int32",
                "loss_mask": "float32"}


def mtp_targets(targets: jax.Array, weights: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The MTP module's targets and weights [B, T]: position t (which sees x_{t+1} = targets[t])
    predicts x_{t+2} = targets[t + 1], weighted as that target is, and only inside one packed
    sequence (t and t + 1 in the same segment); the last position predicts nothing."""
    shifted = jnp.concatenate([targets[:, 1:], jnp.zeros_like(targets[:, :1])], axis=1)
    same = jnp.concatenate([segment_ids[:, 1:] == segment_ids[:, :-1], jnp.zeros_like(segment_ids[:, :1], bool)], 1)
    w = jnp.concatenate([weights[:, 1:], jnp.zeros_like(weights[:, :1])], axis=1)
    return shifted, jnp.where(same, w, 0.0)


def loss_sums(params: dict, batch: dict, cfg: Config) -> tuple[jax.Array, dict]:
    """Weighted loss sums of one (micro-)batch: (total to differentiate, {ce, z, weight, mtp_ce,
    mtp_weight, stats}).

    The logits are computed `train.loss_chunk` positions at a time (glm_jax.train.loss), never whole.
    With an MTP module and `train.mtp_loss_weight` > 0 the total adds mtp_loss_weight x the MTP
    cross-entropy sum (its own output head; normalized by the main loss's weight in the step, so
    micro-batches add up exactly). `stats` are the MoE routing stats (loads, drops) that the
    balancing update reads."""
    use_mtp = bool(cfg.model.mtp_layers) and cfg.train.mtp_loss_weight > 0
    x, stats = hidden_states_and_stats(params, batch["tokens"], cfg.model, cfg.run, batch["positions"],
                                       batch["segment_ids"], mtp_tokens=batch["targets"] if use_mtp else None)
    w = loss_lib.token_weights(batch["loss_mask"], batch["segment_ids"], cfg.train.loss_weighting)
    sums = loss_lib.tiled_cross_entropy_sums(output_logits, x, params["output"]["kernel"], batch["targets"], w,
                                             cfg.train.z_loss, cfg.train.loss_chunk)
    total = sums["total"]
    aux = {"ce": sums["ce"], "z": sums["z"], "weight": jnp.sum(w)}
    if use_mtp:
        t2, w2 = mtp_targets(batch["targets"], w, batch["segment_ids"])
        mtp = loss_lib.tiled_cross_entropy_sums(output_logits, stats.pop("mtp_hidden"), params["mtp"]["output"]["kernel"],
                                                t2, w2, 0.0, cfg.train.loss_chunk)
        total = total + cfg.train.mtp_loss_weight * mtp["total"]
        aux.update(mtp_ce=mtp["ce"], mtp_weight=jnp.sum(w2))
    aux["stats"] = stats
    return total, aux


def objective_sums(cfg: Config, ref_params: dict | None = None) -> Callable:
    """(params, batch) -> (summed loss to differentiate, {sums..., "weight"}) for `train.objective`."""
    if cfg.train.objective == "dpo":
        if ref_params is None:
            raise ValueError("train.objective=dpo needs the reference params (the step's third argument)")
        return functools.partial(dpo_lib.loss_sums, cfg=cfg, ref_params=ref_params)
    return functools.partial(loss_sums, cfg=cfg)


def grads_and_sums(params: dict, batch: dict, cfg: Config, param_sh=None,
                   ref_params: dict | None = None) -> tuple[dict, dict]:
    """Summed gradients (fp32) and loss sums over the whole batch, accumulating micro-batches."""
    grad_fn = jax.grad(objective_sums(cfg, ref_params), has_aux=True)

    def one(mb):
        g, aux = grad_fn(params, mb)
        g = jax.tree.map(lambda x: x.astype(jnp.float32), g)
        if param_sh is not None:
            g = jax.lax.with_sharding_constraint(g, param_sh)
        return g, aux

    A = cfg.train.grad_accum
    if A == 1:
        return one(batch)
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // A, A, *x.shape[1:]), 0, 1), batch)

    def body(carry, mb):
        g, aux = one(mb)
        return jax.tree.map(jnp.add, carry, (g, aux)), None

    zeros = jax.eval_shape(one, jax.tree.map(lambda x: x[0], micro))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
    (g, aux), _ = jax.lax.scan(body, zeros, micro)
    return g, aux


def _metrics(aux: dict, weight: jax.Array, cfg: Config) -> dict:
    if cfg.train.objective == "dpo":  # per-pair means; "total_loss" is what the non-finite check reads
        out = {k: aux[k] / weight for k in (*dpo_lib.METRICS, "policy_accuracy")}
        return {**out, "total_loss": out["loss"], "pairs": aux["pairs"]}
    return {"loss": aux["ce"] / weight, "z_loss": aux["z"] / weight,
            "total_loss": (aux["ce"] + cfg.train.z_loss * aux["z"]) / weight}


def train_step(state: TrainState, batch: dict, ref_params: dict | None = None, *, cfg: Config,
               tx: optax.GradientTransformation, schedule: optax.Schedule, stage_start: int,
               param_sh=None) -> tuple[TrainState, dict]:
    grads, aux = grads_and_sums(state.params, batch, cfg, param_sh, ref_params)
    weight = jnp.maximum(aux["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = schedule(state.step - stage_start)
    params = optax.apply_updates(state.params, opt_lib.apply_lr(updates, lr))
    params = jax.tree.map(lambda new, old: new.astype(old.dtype), params, state.params)
    metrics = {**_metrics(aux, weight, cfg), "grad_norm": grad_norm, "lr": lr, "loss_weight": aux["weight"],
               "tokens": jnp.sum(batch["loss_mask"])}
    if "mtp_ce" in aux:  # logged apart from the main loss
        metrics["mtp_loss"] = aux["mtp_ce"] / jnp.maximum(aux["mtp_weight"], 1.0)
        metrics["total_loss"] = metrics["total_loss"] + cfg.train.mtp_loss_weight * aux["mtp_ce"] / weight
    stats = aux.get("stats", {})  # MoE routing stats; a dense model's loss may report none
    if "moe_layers" in stats:
        # aux-loss-free balancing: the routing biases move by the step's loads, not by a gradient
        params = _balanced(params, state.params, stats, cfg.train.router_bias_rate)
        metrics["moe_load_imbalance"] = balance.load_imbalance(stats)
        metrics["moe_dropped"] = jnp.sum(stats["moe_layers"]["dropped"])
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _balanced(params: dict, old: dict, stats: dict, rate: float) -> dict:
    """`params` (after the optimizer) with the router biases taken from `old` (the optimizer
    never moves them: no gradient) and nudged by this step's loads."""
    nudged = balance.update_router_bias(old, stats, rate)
    for path in balance.router_bias_paths(old).values():
        params = balance.set_leaf(params, path, balance.get_leaf(nudged, path))
    return params


def batch_shardings(cfg: Config, mesh: jax.sharding.Mesh) -> dict:
    shape = (cfg.train.batch_size, cfg.train.seq_len)
    return {k: sharding.batch_sharding(mesh, shape) for k in BATCH_FIELDS}


def abstract_batch(cfg: Config, mesh: jax.sharding.Mesh) -> dict:
    shape = (cfg.train.batch_size, cfg.train.seq_len)
    sh = batch_shardings(cfg, mesh)
    return {k: jax.ShapeDtypeStruct(shape, jnp.dtype(dt), sharding=sh[k]) for k, dt in BATCH_FIELDS.items()}


def make_train_step(cfg: Config, mesh: jax.sharding.Mesh, stage_start: int = 0,
                    tx: optax.GradientTransformation | None = None) -> Callable:
    """jit(train_step) with in/out shardings from the spec tree; the state argument is donated
    (the DPO reference, a third argument sharded like the params, is not). Call (and lower) it
    under `jax.set_mesh(mesh)`."""
    tx = tx or opt_lib.make_optimizer(cfg.train)
    st_sh = state_shardings(cfg, mesh, tx)
    fn = functools.partial(train_step, cfg=cfg, tx=tx, schedule=opt_lib.learning_rate(cfg.train),
                           stage_start=stage_start, param_sh=st_sh.params)
    in_sh = (st_sh, batch_shardings(cfg, mesh))
    if cfg.train.objective == "dpo":
        in_sh += (st_sh.params,)
    else:
        fn = functools.partial(fn, ref_params=None)
    return jax.jit(fn, in_shardings=in_sh, out_shardings=(st_sh, sharding.replicated(mesh)), donate_argnums=0)
