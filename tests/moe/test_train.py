"""GLM-4.5 training: the MTP loss as written out, MTP training lowers it, aux-loss-free balancing
moves the routing biases (and only with a rate), dropless routing drops nothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import config, sharding
from glm_jax.model import hidden_states_and_stats, init_params
from glm_jax.model.layers import rms_norm, rotary_tables
from glm_jax.model.attention import reference_attention
from glm_jax.model.transformer import sublayers
from glm_jax.train import balance, optimizer, state as state_lib
from glm_jax.train.step import _balanced, loss_sums, make_train_step
from tests.moe.hf_glm4moe import tiny_moe


def train_cfg(**train):
    base = dict(seq_len=32, batch_size=8, steps=100, lr=3e-3, warmup_steps=0, schedule="constant", loss_chunk=32,
                grad_clip=1.0, mtp_loss_weight=0.3, router_bias_rate=1e-3)
    base.update(train)
    return config.Config(model=tiny_moe(mtp_layers=1, vocab_size=128), train=config.TrainConfig(**base),
                         mesh=config.MeshConfig(fsdp=1))


def structured_batch(cfg, seed=0):
    """Rows of an affine recurrence x_{t+1} = (a x_t + b) mod V (a, b per row, from 4 choices):
    two tokens ahead is predictable from the context, so both losses can fall. Two packed
    documents per row, the second's last position masked."""
    B, T, V = cfg.train.batch_size, cfg.train.seq_len, cfg.model.vocab_size
    rng = np.random.default_rng(seed)
    seq = np.zeros((B, T + 1), np.int32)
    for r in range(B):
        a, b = [(3, 1), (5, 7), (7, 2), (11, 5)][r % 4]
        seq[r, 0] = rng.integers(V)
        for t in range(T):
            seq[r, t + 1] = (a * seq[r, t] + b) % V
    cut = T // 2
    segment_ids = np.where(np.arange(T) < cut, 1, 2)[None].repeat(B, 0).astype(np.int32)
    positions = np.where(np.arange(T) < cut, np.arange(T), np.arange(T) - cut)[None].repeat(B, 0).astype(np.int32)
    loss_mask = np.ones((B, T), np.float32)
    loss_mask[:, cut - 1] = 0.0  # the first document's last token predicts nothing within it
    loss_mask[:, -1] = 0.0
    return {"tokens": jnp.asarray(seq[:, :-1]), "targets": jnp.asarray(seq[:, 1:]), "positions": jnp.asarray(positions),
            "segment_ids": jnp.asarray(segment_ids), "loss_mask": jnp.asarray(loss_mask)}


@pytest.mark.slow
def test_mtp_loss_equals_direct_computation():
    cfg = train_cfg()
    m = cfg.model
    params = init_params(m, jax.random.key(0))
    batch = structured_batch(cfg)
    _, aux = jax.jit(loss_sums, static_argnums=2)(params, batch, cfg)
    # Written out: position t pairs the main model's final-normed h_t with embed(x_{t+1}) and
    # predicts x_{t+2}, within its document.
    @jax.jit
    def mtp_log_probs(params, batch):
        h, _ = hidden_states_and_stats(params, batch["tokens"], m, batch["positions"], batch["segment_ids"])
        p = params["mtp"]
        x_next = batch["targets"]  # x_{t+1}
        e = rms_norm(p["embed"]["embedding"][x_next], p["enorm"]["scale"], m.rms_norm_eps)
        y = jnp.concatenate([e, rms_norm(h, p["hnorm"]["scale"], m.rms_norm_eps)], -1) @ jnp.concatenate(
            [p["eh_proj"]["kernel"][0], p["eh_proj"]["kernel"][1]], 0)
        cos, sin = rotary_tables(batch["positions"], m.rotary_dim, m.rope_theta)
        y, _, _ = sublayers(y, p["block"], cos, sin,
                            lambda q, k, v: (reference_attention(q, k, v, batch["segment_ids"]), None), m)
        return jax.nn.log_softmax(rms_norm(y, p["head_norm"]["scale"], m.rms_norm_eps) @ p["output"]["kernel"], -1)

    logp = np.asarray(mtp_log_probs(params, batch))
    T = cfg.train.seq_len
    ce, weight = 0.0, 0.0
    mask, seg, tgt = np.asarray(batch["loss_mask"]), np.asarray(batch["segment_ids"]), np.asarray(batch["targets"])
    for b in range(cfg.train.batch_size):
        for t in range(T - 1):
            if mask[b, t + 1] and seg[b, t + 1] == seg[b, t]:  # x_{t+2} is a target of the same document
                ce -= float(logp[b, t, tgt[b, t + 1]])
                weight += 1.0
    assert weight == float(aux["mtp_weight"]) == cfg.train.batch_size * (T - 4)
    np.testing.assert_allclose(float(aux["mtp_ce"]), ce, rtol=1e-5)


RATE = 0.01


@pytest.fixture(scope="module")
def trained():  # ~30-90 s on 2 cores (one train-step compile): the tests using it are marked slow
    """20 train steps of the tiny MoE with MTP on one structured batch, starting with the routing
    bias of expert 0 0.1 above the others (sigmoid scores of the init spread by ~0.04): most tokens
    go to expert 0. Returns (cfg, metrics per step, router biases before each step and after the last)."""
    cfg = train_cfg(router_bias_rate=RATE)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    tx = optimizer.make_optimizer(cfg.train)
    path = ("moe_layers", "moe", "router", "bias")
    with jax.set_mesh(mesh):
        params = init_params(cfg.model, jax.random.key(cfg.train.seed))
        params = balance.set_leaf(params, path, balance.get_leaf(params, path).at[:, 0].set(0.1))
        st = state_lib.state_from_params(cfg, mesh, tx, params)
        step = make_train_step(cfg, mesh, tx=tx)
        batch = structured_batch(cfg, seed=1)
        rows, biases = [], [np.asarray(balance.get_leaf(st.params, path))]
        for _ in range(20):
            st, m = step(st, batch)
            rows.append(jax.device_get(m))
            biases.append(np.asarray(balance.get_leaf(st.params, path)))
    return cfg, rows, biases


@pytest.mark.slow
def test_training_with_mtp_lowers_the_mtp_loss_logged_separately(trained):
    cfg, rows, _ = trained
    mtp = [float(r["mtp_loss"]) for r in rows]
    main = [float(r["loss"]) for r in rows]
    print(f"mtp_loss {mtp[0]:.3f} -> {mtp[-1]:.3f}, loss {main[0]:.3f} -> {main[-1]:.3f}")
    assert mtp[-1] < 0.8 * mtp[0], mtp
    assert main[-1] < 0.8 * main[0], main
    # the MTP loss enters the total with its weight (normalized by the main loss's weight)
    w = rows[0]["loss_weight"]
    mtp_weight = w - cfg.train.batch_size * 2  # each document's last counted position has no x_{t+2}
    np.testing.assert_allclose(rows[0]["total_loss"],
                               rows[0]["loss"] + cfg.train.mtp_loss_weight * mtp[0] * mtp_weight / w, rtol=1e-5)
    assert all(r["moe_dropped"] == 0 for r in rows)  # dropless: nothing counted as dropped


@pytest.mark.slow
def test_bias_update_reduces_load_imbalance(trained):
    """The train step's aux-loss-free balancing brings max/mean expert load down, moving every
    bias by exactly +-rate per step (not by a gradient: the optimizer leaves it alone)."""
    cfg, rows, biases = trained
    imbalance = [float(r["moe_load_imbalance"]) for r in rows]
    print("max/mean load per step", np.round(imbalance, 2).tolist())
    X, k = cfg.model.num_experts, cfg.model.experts_per_token
    assert imbalance[0] > 0.8 * X / k  # expert 0 takes (almost) every token: max/mean near X / k = 4
    assert np.mean(imbalance[-5:]) < 0.5 * imbalance[0], imbalance
    # exactly +-rate: no gradient (which Adam would turn into an lr-sized move) reaches the bias
    steps = np.abs(np.diff(np.stack(biases), axis=0))
    assert np.all(np.isclose(steps, RATE, atol=1e-7) | (steps == 0))
    assert (biases[-1][:, 0] < biases[0][:, 0]).all()  # the overloaded expert's bias came down in every layer


def test_rate_zero_never_changes_the_bias():
    cfg = train_cfg()
    params = init_params(cfg.model, jax.random.key(0))
    stats = {"moe_layers": {"load": jnp.arange(2 * 8, dtype=jnp.float32).reshape(2, 8)},
             "mtp": {"load": jnp.arange(8, dtype=jnp.float32)}}
    assert balance.update_router_bias(params, stats, 0.0) is params
    moved = balance.update_router_bias(params, stats, 0.5)
    np.testing.assert_array_equal(moved["moe_layers"]["moe"]["router"]["bias"][0], [0.5] * 4 + [-0.5] * 4)
    np.testing.assert_array_equal(moved["mtp"]["block"]["moe"]["router"]["bias"], [0.5] * 4 + [-0.5] * 4)
    # the step takes the biases from the state before the optimizer, so whatever the optimizer
    # did to them (nothing: no gradient reaches them) the rate alone moves them
    after_optimizer = jax.tree.map(lambda a: a + 1.0, params)
    kept = _balanced(after_optimizer, params, stats, 0.0)
    np.testing.assert_array_equal(kept["moe_layers"]["moe"]["router"]["bias"],
                                  params["moe_layers"]["moe"]["router"]["bias"])
    np.testing.assert_array_equal(kept["moe_layers"]["moe"]["experts"]["wi"]["kernel"],
                                  after_optimizer["moe_layers"]["moe"]["experts"]["wi"]["kernel"])
