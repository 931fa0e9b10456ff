"""Loss: masked fp32 cross-entropy, z-loss, token vs sequence (LongAlign) weighting."""

import numpy as np


import jax.numpy as jnp

from glm_jax.train import loss


def _np_ce(logits, targets):
    z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return z - np.take_along_axis(logits, targets[..., None], -1)[..., 0], z


def _case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 8, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 8)).astype(np.int32)
    targets[0, 0] = 0  # token id 0 is a real token
    # row 0: a 6-token document (5 counted targets) and a 2-token one (1 counted); row 1: one doc + padding
    seg = np.array([[1, 1, 1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]], np.float32)
    return logits, targets, seg, mask


def test_token_weighting_is_the_masked_mean_and_counts_token_zero():
    logits, targets, seg, mask = _case()
    w = loss.token_weights(jnp.asarray(mask), jnp.asarray(seg), "token")
    sums = loss.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), w, z_loss=0.0)
    ce, _ = _np_ce(logits.astype(np.float64), targets)
    np.testing.assert_allclose(float(sums["ce"] / w.sum()), (ce * mask).sum() / mask.sum(), rtol=1e-6)
    assert float(w[0, 0]) == 1.0  # the target with id 0 counts


def test_sequence_weighting_gives_each_packed_sequence_equal_weight():
    logits, targets, seg, mask = _case()
    w = loss.token_weights(jnp.asarray(mask), jnp.asarray(seg), "sequence")
    ce, _ = _np_ce(logits.astype(np.float64), targets)
    per_seq = [ce[0, :5].mean(), ce[0, 6:7].mean(), ce[1, :3].mean()]  # three sequences, equal weight
    sums = loss.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), w, z_loss=0.0)
    assert float(w.sum()) == 3.0
    np.testing.assert_allclose(float(sums["ce"] / w.sum()), np.mean(per_seq), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w[0, :5]), 0.2, rtol=1e-6)
    assert float(w[0, 6]) == 1.0 and float(w[1, 4:].sum()) == 0.0


def test_z_loss_adds_the_weighted_mean_of_log_z_squared():
    logits, targets, seg, mask = _case()
    w = loss.token_weights(jnp.asarray(mask), jnp.asarray(seg), "token")
    sums = loss.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), w, z_loss=1e-2)
    ce, z = _np_ce(logits.astype(np.float64), targets)
    expect = ((ce + 1e-2 * z ** 2) * mask).sum()
    np.testing.assert_allclose(float(sums["total"]), expect, rtol=1e-6)
    assert sums["total"].dtype == jnp.float32

