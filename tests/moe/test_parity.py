"""GLM-4.5 MoE parity with transformers' Glm4MoeForCausalLM: fp32 logits and the routing decisions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import model
from glm_jax.convert import hf as hf_convert
from glm_jax.model import moe
from tests import hf_reference
from tests.conftest import replace, tiny_moe

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=[True, False], ids=["qk_norm", "no_qk_norm"])
def pair(request, tmp_path_factory):
    """(cfg, transformers model, our params read back from its save_pretrained directory)."""
    cfg = tiny_moe(qk_norm=request.param)
    hf = hf_reference.random_model(cfg, seed=int(request.param))
    out = tmp_path_factory.mktemp("glm4moe")
    hf.save_pretrained(out)
    return cfg, hf, jax.tree.map(jnp.asarray, hf_convert.import_dir(str(out), cfg))


def test_fp32_logits_match_transformers_glm4moe(pair):
    cfg, hf, params = pair
    tokens = jax.random.randint(jax.random.key(1), (2, 48), 0, cfg.vocab_size)
    ours = np.asarray(jax.jit(model.forward, static_argnums=2)(params, tokens, cfg))
    theirs = hf_reference.logits(hf, tokens)
    assert np.abs(ours - theirs).max() <= 1e-4, np.abs(ours - theirs).max()
    print(f"max |logit diff| {np.abs(ours - theirs).max():.2e} (logits up to {np.abs(theirs).max():.1f})")
    # Glm4Moe's rotary is rotate-half, not GLM-4's interleaved pairs: the other style is another model
    other = np.asarray(model.forward(params, tokens, replace(cfg, rotary_style="interleaved")))
    assert np.abs(other - theirs).max() > 1e-2


def test_same_top_k_experts_per_token_as_transformers(pair):
    """The router's decisions in every MoE layer of a real forward pass (its input captured by a
    hook): the same k experts for every token, group limit and correction bias included, and
    the same weights."""
    cfg, hf, params = pair
    tokens = jax.random.randint(jax.random.key(2), (2, 40), 0, cfg.vocab_size)
    seen = []
    hooks = [hf.model.layers[cfg.num_dense_layers + j].mlp.gate.register_forward_hook(
        lambda mod, args, out: seen.append((args[0].detach().numpy().copy(), out[1].numpy(), out[2].numpy())))
        for j in range(cfg.num_moe_layers)]
    try:
        hf_reference.logits(hf, tokens)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == cfg.num_moe_layers
    for j, (normed, w_ref, idx_ref) in enumerate(seen):
        p = jax.tree.map(lambda a: a[j], params["moe_layers"])["moe"]["router"]
        w, idx = moe.route(jnp.asarray(normed.reshape(-1, cfg.hidden_size)), p["kernel"], p["bias"], cfg)
        w, idx = np.asarray(w), np.asarray(idx)
        assert idx.shape == (tokens.size, cfg.moe.experts_per_token)
        ours_order, theirs_order = np.argsort(idx, axis=1), np.argsort(idx_ref, axis=1)
        np.testing.assert_array_equal(np.take_along_axis(idx, ours_order, 1), np.take_along_axis(idx_ref, theirs_order, 1))
        np.testing.assert_allclose(np.take_along_axis(w, ours_order, 1), np.take_along_axis(w_ref, theirs_order, 1),
                                   atol=1e-6)
        # the group limit binds: every token's experts lie in one of the 2 groups, and both groups are used
        groups = idx // (cfg.moe.num_experts // cfg.moe.expert_groups)
        assert (groups == groups[:, :1]).all() and len(np.unique(groups)) == cfg.moe.expert_groups


def test_correction_bias_changes_selection_not_weights():
    """The bias picks experts; the weights come from the unbiased sigmoid scores."""
    cfg = tiny_moe(expert_groups=1, expert_groups_per_token=1, routed_scaling_factor=1.0)
    x = jax.random.normal(jax.random.key(0), (64, cfg.hidden_size))
    kernel = jax.random.normal(jax.random.key(1), (cfg.hidden_size, cfg.moe.num_experts)) * 0.1
    _, idx0 = moe.route(x, kernel, jnp.zeros(cfg.moe.num_experts), cfg)
    bias = jnp.zeros(cfg.moe.num_experts).at[3].set(10.0)
    w, idx = moe.route(x, kernel, bias, cfg)
    assert (np.asarray(idx) == 3).any(axis=1).all() and not (np.asarray(idx0) == 3).any(axis=1).all()
    scores = jax.nn.sigmoid(x @ kernel)
    picked = jnp.take_along_axis(scores, idx, 1)
    np.testing.assert_allclose(w, picked / picked.sum(1, keepdims=True), rtol=1e-6)


@pytest.mark.slow
def test_kv_cache_decoding_matches_forward_for_moe(pair):
    """Prefill + one-token steps through both stacks equal the full forward pass."""
    from glm_jax.model import decode

    cfg, _, params = pair
    if not cfg.qk_norm:
        pytest.skip("decoding shares every code path between the two variants: run it once")
    tokens = jax.random.randint(jax.random.key(5), (2, 12), 0, cfg.vocab_size)
    full = model.forward(params, tokens, cfg)
    cache = decode.init_cache(cfg, batch=2, max_len=16)
    step = jax.jit(decode.extend, static_argnums=3)
    logits, cache = step(params, tokens[:, :8], cache, cfg)
    outs = [logits]
    for t in range(8, 12):
        logits, cache = step(params, tokens[:, t:t + 1], cache, cfg)
        outs.append(logits)
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=2e-5)
