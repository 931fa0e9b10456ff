"""Mixed precision: fp32 master params and Adam moments, bf16 compute (`run.dtype`); bf16
storage (`model.param_dtype`) is refused for training."""

import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from glm_jax import config, model, sharding
from glm_jax.config import ConfigError
from glm_jax.train import optimizer, state as state_lib, step as step_lib
from tests.conftest import REPO


def _debug(*overrides):
    return config.load(os.path.join(REPO, "configs", "debug.py"), ["mesh.fsdp=1", *overrides])


def test_bf16_compute_keeps_fp32_master_params_and_moments():
    cfg = _debug("run.dtype='bfloat16'")
    st = state_lib.abstract_state(cfg, optimizer.make_optimizer(cfg.train))
    float_leaves = [x for x in jax.tree.leaves((st.params, st.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert len(float_leaves) > 3 * len(jax.tree.leaves(st.params)) - 1  # params, mu, nu
    assert {x.dtype for x in float_leaves} == {jnp.dtype(jnp.float32)}
    tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
    hidden = jax.eval_shape(lambda p, t: model.hidden_states(p, t, cfg.model, cfg.run), st.params, tokens)
    assert hidden.dtype == jnp.bfloat16  # the layers compute in bf16


def test_bf16_param_dtype_is_refused_for_training_naming_the_field():
    cfg = _debug("model.param_dtype='bfloat16'")
    with pytest.raises(ConfigError, match=r"model.param_dtype.*no fp32 master copy.*run.dtype=bfloat16"):
        state_lib.abstract_state(cfg, optimizer.make_optimizer(cfg.train))


@pytest.mark.parametrize("name", ["glm4_9b", "glm4_9b_chat", "glm4_9b_chat_1m", "chatglm3_6b"])
def test_tpu_configs_compute_in_bf16_on_fp32_masters(name):
    cfg = config.load(os.path.join(REPO, "configs", f"{name}.py"))
    assert (cfg.run.dtype, cfg.model.param_dtype) == ("bfloat16", "float32")


def _learnable_batches(cfg, n):
    """Rows of a noisy cycle over 256 token ids (next = perm[cur], 10% random), two documents
    per row, so a few dozen steps visibly lower the loss."""
    rng = np.random.default_rng(0)
    perm = rng.permutation(256)
    B, T = cfg.train.batch_size, cfg.train.seq_len
    for _ in range(n):
        stream = np.zeros((B, T + 1), np.int32)
        stream[:, 0] = rng.integers(0, 256, B)
        for t in range(T):
            noise = rng.random(B) < 0.1
            stream[:, t + 1] = np.where(noise, rng.integers(0, 256, B), perm[stream[:, t]])
        seg = np.where(np.arange(T) < T // 2, 1, 2).astype(np.int32)[None].repeat(B, 0)
        pos = np.where(seg == 1, np.arange(T), np.arange(T) - T // 2).astype(np.int32)
        mask = np.ones((B, T), np.float32)
        mask[:, T // 2 - 1] = 0.0  # the first document's last token predicts nothing in it
        yield {"tokens": stream[:, :-1], "targets": stream[:, 1:], "positions": pos, "segment_ids": seg,
               "loss_mask": mask}


def _losses_after(cfg, steps):
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    tx = optimizer.make_optimizer(cfg.train)
    losses = []
    with jax.set_mesh(mesh):
        st = state_lib.init_state(cfg, mesh, tx)
        fn = step_lib.make_train_step(cfg, mesh, tx=tx)
        for batch in _learnable_batches(cfg, steps):
            st, m = fn(st, sharding.global_batch(batch, mesh, cfg.train.batch_size))
            losses.append(float(m["loss"]))
    return losses


@pytest.mark.slow
def test_bf16_compute_loss_after_100_steps_is_within_2_percent_of_fp32():
    """Debug model, batch 4 x 64, 100 AdamW steps on the same batches: fp32 master + bf16
    compute ends within 2% of the all-fp32 run (mean loss of the last 5 steps)."""
    common = ["train.seq_len=64", "train.batch_size=4", "train.steps=100", "train.warmup_steps=10", "train.z_loss=1e-4"]
    fp32 = _losses_after(_debug(*common), 100)
    bf16 = _losses_after(_debug(*common, "run.dtype='bfloat16'"), 100)
    end32, end16 = np.mean(fp32[-5:]), np.mean(bf16[-5:])
    assert end32 < 0.75 * fp32[0]  # the runs learn: the comparison is not between two flat lines
    assert abs(end16 - end32) <= 0.02 * end32, (fp32[0], end32, end16)
