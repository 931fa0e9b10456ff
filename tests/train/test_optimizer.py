"""Schedules and AdamW's decay mask."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from glm_jax.config import TrainConfig
from glm_jax.train import optimizer


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_decay_to_end_ratio(schedule):
    t = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, schedule=schedule, end_lr_ratio=0.1)
    lr = optimizer.learning_rate(t)
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(float(lr(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(lr(10)), 1e-3, rtol=1e-6)
    end = {"cosine": 1e-4, "linear": 1e-4, "constant": 1e-3}[schedule]
    np.testing.assert_allclose(float(lr(110)), end, rtol=1e-5)
    if schedule == "cosine":
        np.testing.assert_allclose(float(lr(60)), 1e-4 + 0.5 * 9e-4, rtol=1e-5)


def test_no_weight_decay_on_norms_and_biases():
    params = {"layers": {"attn_norm": {"scale": jnp.ones(4)}, "attn": {"q": {"kernel": jnp.ones((4, 4)),
                                                                               "bias": jnp.ones(4)}}},
              "embed": {"embedding": jnp.ones((8, 4))}}
    t = TrainConfig(weight_decay=0.5, grad_clip=1.0)
    tx = optimizer.make_optimizer(t)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = jax.tree.map(jnp.add, params, optimizer.apply_lr(updates, jnp.float32(0.1)))
    np.testing.assert_array_equal(new["layers"]["attn_norm"]["scale"], 1.0)
    np.testing.assert_array_equal(new["layers"]["attn"]["q"]["bias"], 1.0)
    np.testing.assert_allclose(new["layers"]["attn"]["q"]["kernel"], 1.0 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(new["embed"]["embedding"], 1.0 - 0.1 * 0.5, rtol=1e-6)
