"""`run.attention` = reference / flash / splash changes nothing in the numbers of a training step
on an 8-device (fsdp x tensor) mesh: same loss, same gradients (kernels in interpret mode on CPU)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import config, model
from glm_jax.config import MeshConfig
from glm_jax.sharding import make_mesh
from tests.conftest import REPO
from tests.kernels.train_step import jitted_step


def _step(cfg, run, mesh, params, tokens, segment_ids):
    step = jitted_step(cfg, mesh, tokens.shape)
    with jax.set_mesh(mesh):
        return step(params, tokens, segment_ids, run)


@pytest.fixture(scope="module")
def debug_batch():
    full = config.load(os.path.join(REPO, "configs", "debug.py"))
    cfg = dataclasses.replace(full.model, num_layers=2)  # the debug model's shapes, fewer layers: interpret mode is slow
    params = model.init_params(cfg, jax.random.key(0))
    B, T = 4, 256
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
    # packed rows: documents of different lengths, one crossing the 128-token block boundary
    bounds = np.array([[0, 90, 200], [0, 128, 129], [0, 60, 250], [0, 256, 256]])
    segment_ids = jnp.asarray((np.arange(T)[None, :, None] >= bounds[:, None, :]).sum(-1), jnp.int32)
    return cfg, full.run, params, tokens, segment_ids


@pytest.mark.slow
@pytest.mark.parametrize("mesh_axes", [dict(fsdp=4, tensor=2), dict(fsdp=2, tensor=4)])
def test_train_step_same_loss_and_grads_across_backends(debug_batch, mesh_axes):
    cfg, run, params, tokens, segment_ids = debug_batch
    mesh = make_mesh(MeshConfig(**mesh_axes))
    ref_loss, ref_grads = _step(cfg, run, mesh, params, tokens, segment_ids)
    for backend in ("flash", "splash"):
        loss, grads = _step(cfg, dataclasses.replace(run, attention=backend), mesh, params, tokens, segment_ids)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=backend)
        for path, g, r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads),
                              jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(g, r, atol=1e-5 * float(np.abs(r).max()) + 1e-8, rtol=1e-3,
                                       err_msg=f"{backend} {jax.tree_util.keystr(path[0])}")
