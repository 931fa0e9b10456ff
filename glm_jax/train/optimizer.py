"""AdamW with warmup + cosine/linear decay, global-norm clipping, no weight decay on norms and biases.

The learning rate is applied in the train step from the schedule of the *stage-local* step, not
from a counter inside the optimizer state: a stage that keeps the previous stage's Adam moments
(`train.optimizer_state=keep`) still starts its own warmup and decay.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from glm_jax.config import TrainConfig

_NO_DECAY = ("scale", "bias")  # RMSNorm scales and Q/K/V biases


def learning_rate(t: TrainConfig) -> optax.Schedule:
    """lr(step within the stage): linear warmup from 0 to `lr`, then cosine / linear decay to
    `lr x end_lr_ratio` at `steps`, or constant."""
    warm = optax.linear_schedule(0.0, t.lr, max(t.warmup_steps, 1)) if t.warmup_steps else optax.constant_schedule(t.lr)
    decay_steps = max(t.steps - t.warmup_steps, 1)
    end = t.lr * t.end_lr_ratio
    after = {
        "cosine": optax.cosine_decay_schedule(t.lr, decay_steps, alpha=t.end_lr_ratio),
        "linear": optax.linear_schedule(t.lr, end, decay_steps),
        "constant": optax.constant_schedule(t.lr),
    }[t.schedule]
    if not t.warmup_steps:
        return after
    return optax.join_schedules([warm, after], [t.warmup_steps])


def decay_mask(params: dict) -> dict:
    """True for leaves that get weight decay: everything except norm scales and biases."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key not in _NO_DECAY, params)


def make_optimizer(t: TrainConfig) -> optax.GradientTransformation:
    """Clip -> Adam moments (fp32, like the master params) -> decoupled weight decay. The result is
    scaled by -lr(step) in the step."""
    parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    parts += [optax.scale_by_adam(b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, mu_dtype=jnp.float32),
              optax.add_decayed_weights(t.weight_decay, mask=decay_mask)]
    return optax.chain(*parts)


def apply_lr(updates: dict, lr: jax.Array) -> dict:
    return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
