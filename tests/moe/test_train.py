"""GLM-4.5 training: the MTP loss as written out, MTP training lowers it, aux-loss-free balancing
moves the routing biases (and only with a rate), dropless routing drops nothing."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import config
from glm_jax.model import forward as model_forward
from glm_jax.model import hidden_states_and_stats, init_params
from glm_jax.model.layers import rms_norm, rotary_tables
from glm_jax.model.attention import reference_attention
from glm_jax.model.transformer import sublayers
from glm_jax.train import balance
from glm_jax.train.step import _balanced, loss_sums
from tests.conftest import REPO
from tests.conftest import tiny_moe


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
        h, _ = hidden_states_and_stats(params, batch["tokens"], m, cfg.run, batch["positions"],
                                       batch["segment_ids"])
        p = params["mtp"]
        x_next = batch["targets"]  # x_{t+1}
        e = rms_norm(p["embed"]["embedding"][x_next], p["enorm"]["scale"], m.rms_norm_eps)
        y = jnp.concatenate([e, rms_norm(h, p["hnorm"]["scale"], m.rms_norm_eps)], -1) @ jnp.concatenate(
            [p["eh_proj"]["kernel"][0], p["eh_proj"]["kernel"][1]], 0)
        cos, sin = rotary_tables(batch["positions"], m.rotary_dim, m.rope_theta)
        y, _, _ = sublayers(y, p["block"], cos, sin,
                            lambda q, k, v: (reference_attention(q, k, v, batch["segment_ids"]), None), m, cfg.run)
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
STEPS = 16
SMALL_MOE = ["model.hidden_size=64", "model.ffn_hidden_size=128", "model.moe.ffn_hidden_size=32",
             "model.vocab_size=512", "model.num_heads=4", "model.kv_groups=2", "model.head_dim=16",
             "train.seq_len=32", "train.batch_size=8", f"train.steps={STEPS}", "train.warmup_steps=0",
             "train.schedule='constant'", "train.lr=3e-3", "train.loss_chunk=32", f"train.router_bias_rate={RATE}",
             "train.log_every=4", "mesh.expert=2", "mesh.fsdp=4", f"checkpoint.every_steps={STEPS}",
             "checkpoint.async_save=False"]


class StructuredRows:
    """The train loop's iterator contract (glm_jax.train.loop) over `structured_batch`: the same
    batch every step; its state is the step count."""

    def __init__(self, cfg, rows):
        self.batch = {k: np.asarray(v)[rows] for k, v in structured_batch(cfg, seed=1).items()}
        self.n = 0

    def __next__(self):
        self.n += 1
        return self.batch

    def get_state(self):
        return {str(r): {"n": self.n} for r in range(len(next(iter(self.batch.values()))))}

    def set_state(self, states):
        self.n = next(iter(states.values()))["n"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """configs/debug_moe.py (shrunk) trained by the train loop for 16 steps on 8 devices, experts
    split over 2 (mesh expert=2 x fsdp=4), from params whose routing bias puts expert 0 0.1 above
    the others (the init's sigmoid scores spread by ~0.04: most tokens go to expert 0).
    Returns (cfg, metrics rows, initial params, trained params, workdir). One train-step compile
    (~60-200 s on 2 shared cores): the tests using it are marked slow."""
    from glm_jax.train import checkpoint, loop

    tmp = tmp_path_factory.mktemp("moe_run")
    cd = config.apply_overrides(config.load_config_dict(os.path.join(REPO, "configs", "debug_moe.py")), SMALL_MOE)
    cfg = config.from_config_dict(cd)
    path = ("moe_layers", "moe", "router", "bias")
    params = jax.device_get(init_params(cfg.model, jax.random.key(0)))
    params = balance.set_leaf(params, path, np.asarray(balance.get_leaf(params, path)).copy())
    balance.get_leaf(params, path)[:, 0] = 0.1
    start = str(tmp / "start")
    checkpoint.save_params(start, params, cfg)
    cd = config.apply_overrides(cd, [f"train.init_from='{start}'"])
    workdir = str(tmp / "run")
    loop.run(cd, workdir, make_iterator=StructuredRows)
    rows = sorted((json.loads(line) for f in os.listdir(os.path.join(workdir, "metrics")) if f.endswith(".jsonl")
                   for line in open(os.path.join(workdir, "metrics", f))), key=lambda r: r["step"])
    trained_params, cfg = checkpoint.restore_params(workdir)
    return cfg, rows, params, trained_params


@pytest.mark.slow
def test_training_with_mtp_lowers_the_mtp_loss_logged_separately(trained):
    cfg, rows, _, _ = trained
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    mtp = [r["mtp_loss"] for r in rows]
    main = [r["loss"] for r in rows]
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
    bias by +-rate per step (not by a gradient: the optimizer leaves it alone)."""
    cfg, rows, start, end = trained
    imbalance = [r["moe_load_imbalance"] for r in rows]
    print("max/mean load per step", np.round(imbalance, 2).tolist())
    X, k = cfg.model.moe.num_experts, cfg.model.moe.experts_per_token
    assert imbalance[0] > 0.8 * X / k  # expert 0 takes (almost) every token: max/mean near X / k = 4
    assert np.mean(imbalance[-4:]) < 0.5 * imbalance[0], imbalance
    path = ("moe_layers", "moe", "router", "bias")
    moved = (np.asarray(balance.get_leaf(end, path)) - balance.get_leaf(start, path)) / RATE
    # whole multiples of the rate, at most one per step: no gradient (Adam would add lr-sized moves)
    np.testing.assert_allclose(moved, np.round(moved), atol=1e-3)
    assert np.abs(moved).max() <= STEPS and (moved[:, 0] < 0).all()  # the overloaded expert's bias came down


@pytest.mark.slow
def test_trained_debug_moe_exports_to_transformers_with_same_logits(trained, tmp_path):
    """... -> to-hf -> transformers' Glm4MoeForCausalLM gives our logits (<= 1e-4); the trained
    MTP weights travel along and come back bit-identical."""
    from glm_jax.convert import hf
    from tests import hf_reference

    transformers = pytest.importorskip("transformers")
    cfg, _, start, params = trained
    assert not np.allclose(params["mtp"]["eh_proj"]["kernel"], start["mtp"]["eh_proj"]["kernel"])  # trained
    out = str(tmp_path / "hf")
    hf.export(params, cfg.model, out, dtype="float32")
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(loaded).__name__ == "Glm4MoeForCausalLM" and not info["missing_keys"]
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 48))
    theirs = hf_reference.logits(loaded.eval(), tokens)
    ours = np.asarray(jax.jit(model_forward, static_argnums=2)(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens),
                                                                cfg.model))
    print(f"trained debug_moe vs transformers: max |logit diff| {np.abs(ours - theirs).max():.2e}")
    assert np.abs(ours - theirs).max() <= 1e-4, np.abs(ours - theirs).max()
    back = hf.import_dir(out, cfg.model)
    assert jax.tree.structure(back["mtp"]) == jax.tree.structure(params["mtp"])
    for a, b in zip(jax.tree.leaves(params["mtp"]), jax.tree.leaves(back["mtp"])):
        np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.slow
def test_a_resumed_run_may_change_how_the_experts_run_but_not_what_they_are(tmp_path):
    """Resume with another grouped matmul (megablox) and dispatch rounds (8 tokens at a time):
    the losses are an uninterrupted run's; resuming with another architecture is refused naming
    the field."""
    from glm_jax.train import loop, metrics

    cd = config.apply_overrides(config.load_config_dict(os.path.join(REPO, "configs", "debug_moe.py")),
                                SMALL_MOE + ["train.log_every=1", "checkpoint.every_steps=3"])

    def run(workdir, *overrides):
        loop.run(config.apply_overrides(cd, list(overrides)), str(workdir), make_iterator=StructuredRows)
        return {r["step"]: r["loss"] for r in metrics.read_rows(str(workdir))}

    whole = run(tmp_path / "whole", "train.steps=4")
    run(tmp_path / "split", "train.steps=3")
    # one step on megablox (Pallas interpret mode on CPU: slow) with 4 dispatch rounds of 8 tokens
    split = run(tmp_path / "split", "train.steps=4", "run.moe_matmul='megablox'", "run.moe_dispatch_tokens=8")
    assert sorted(split) == sorted(whole) == list(range(1, 5))
    np.testing.assert_allclose(split[4], whole[4], rtol=2e-5)
    with pytest.raises(config.ConfigError, match=r"model\.moe\.expert_groups \(2 there, 1 now\)"):
        run(tmp_path / "split", "train.steps=5", "model.moe.expert_groups=1", "model.moe.expert_groups_per_token=1")


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
