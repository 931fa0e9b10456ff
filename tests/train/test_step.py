"""The train step: same loss and gradients on every mesh; gradient accumulation is exact."""

import os

import numpy as np
import pytest

import jax

from glm_jax import config, sharding
from glm_jax.train import optimizer, state as state_lib, step as step_lib
from tests.conftest import REPO
from tests.train import synthetic


def _cfg(*overrides):
    return config.load(os.path.join(REPO, "configs", "debug.py"), ["train.seq_len=32", *overrides])


def _batch(cfg):
    it = synthetic.make_iterator(cfg, rows=range(cfg.train.batch_size))
    return next(it)


def _loss_and_grads(cfg, devices):
    """(mean loss, mean gradients) of the debug model on one batch, on `cfg.mesh` over `devices`."""
    mesh = sharding.make_mesh(cfg.mesh, devices)
    tx = optimizer.make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        st = state_lib.init_state(cfg, mesh, tx)
        batch = sharding.global_batch(_batch(cfg), mesh, cfg.train.batch_size)
        fn = jax.jit(lambda p, b: step_lib.grads_and_sums(p, b, cfg))
        g, aux = fn(st.params, batch)
        assert float(aux["weight"]) > 100  # packed rows with real targets
        g = jax.tree.map(lambda x: np.asarray(x) / float(aux["weight"]), g)
        return float(aux["ce"] / aux["weight"]), g, st.params["embed"]["embedding"].sharding


MESHES = [dict(data=8, fsdp=1), dict(fsdp=8), dict(fsdp=4, tensor=2), dict(data=2, fsdp=2, tensor=2)]


@pytest.mark.slow
def test_same_loss_and_gradients_on_every_mesh():
    ref_loss, ref_grads, _ = _loss_and_grads(_cfg("mesh.fsdp=1"), jax.devices()[:1])
    for mesh in MESHES:
        cfg = _cfg(*(f"mesh.{k}={v}" for k, v in mesh.items()))
        loss, grads, emb_sharding = _loss_and_grads(cfg, jax.devices())
        assert len(emb_sharding.device_set) == 8
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=str(mesh))
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
            ref = ref_grads
            for p in path:
                ref = ref[p.key]
            np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5, err_msg=f"{mesh} {jax.tree_util.keystr(path)}")


def test_gradient_accumulation_equals_one_big_batch():
    """grad_accum=4 (micro-batches under scan) gives the loss and gradients of one batch of 16 rows."""
    out = []
    for accum in (1, 4):
        cfg = _cfg("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "model.num_layers=1", f"train.grad_accum={accum}",
                   "train.batch_size=16")
        out.append(_loss_and_grads(cfg, jax.devices())[:2])
    (l1, g1), (l4, g4) = out
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g4, g1)
