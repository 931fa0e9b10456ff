"""Expert parallelism: the same loss, MTP loss, expert loads and gradients on every mesh, with the
tokens sent to the experts all at once or a few at a time (run.moe_dispatch_tokens)."""

import dataclasses

import jax
import numpy as np
import pytest

from glm_jax import config, sharding
from glm_jax.model import init_params, spec
from glm_jax.train.step import batch_shardings, grads_and_sums
from tests.moe.test_train import structured_batch, train_cfg

# name: (mesh, model overrides); expert4_fsdp2 holds one row of 32 tokens a device: 4 rounds of 8;
# expert8 (no fsdp): one expert a device, the layers and 4 rounds of 8 of its 32 tokens unrolled;
# expert2_sequence2_fsdp2: context parallel attention beside the experts, 2 rows x 16 positions a device
MESHES = {"expert1": (dict(fsdp=1), {}), "expert4_fsdp2_rounds": (dict(expert=4, fsdp=2), dict(moe_dispatch_tokens=8)),
          "expert2_tensor2_fsdp2": (dict(expert=2, tensor=2, fsdp=2), {}),
          "expert8_unrolled_rounds": (dict(expert=8, fsdp=1), dict(moe_dispatch_tokens=8, scan_layers=False)),
          "expert2_sequence2_fsdp2_rounds": (dict(expert=2, sequence=2, fsdp=2), dict(moe_dispatch_tokens=8))}


def loss_and_grads(mesh_kw, run_kw, cfg=None):
    """(grads, aux) of `cfg` (default train_cfg()) with `run_kw` applied to its run section, on a
    mesh of `mesh_kw`."""
    cfg = cfg or train_cfg()
    cfg = config.Config(model=cfg.model, run=dataclasses.replace(cfg.run, **run_kw), train=cfg.train,
                        mesh=config.MeshConfig(**mesh_kw))
    n = int(np.prod(list(mesh_kw.values())))
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:n])
    params = init_params(cfg.model, jax.random.key(0))
    batch = structured_batch(cfg)
    p_sh = sharding.tree_shardings(mesh, spec.param_specs(cfg.model))
    with jax.set_mesh(mesh):
        fn = jax.jit(lambda p, b: grads_and_sums(p, b, cfg, p_sh), in_shardings=(p_sh, batch_shardings(cfg, mesh)))
        args = jax.device_put(params, p_sh), jax.device_put(batch, batch_shardings(cfg, mesh))
        if mesh_kw.get("expert", 1) > 1:  # the experts are split over the expert axis and tokens go by all-to-all
            assert args[0]["moe_layers"]["moe"]["experts"]["wi"]["kernel"].sharding.spec[1] == "expert"
            text = fn.lower(*args).as_text()
            assert "all_to_all" in text
            if "moe_dispatch_tokens" in run_kw:  # a round's receive buffer: P x m x k rows, not P x 32 x k
                m = cfg.model
                assert (f"tensor<{mesh_kw['expert'] * cfg.run.moe_dispatch_tokens * m.moe.experts_per_token}"
                        f"x{m.hidden_size}x") in text
        if cfg.run.moe_matmul == "megablox":  # a Pallas call XLA cannot partition: it runs per device
            assert "shard_map" in str(fn.trace(*args).jaxpr)
        grads, aux = fn(*args)
    return jax.device_get((grads, aux))


@pytest.mark.slow
def test_same_loss_and_grads_on_expert_meshes():
    ref_g, ref = loss_and_grads(*MESHES["expert1"])
    assert float(np.sum(ref["stats"]["moe_layers"]["dropped"])) == 0
    for name in [n for n in MESHES if n != "expert1"]:
        g, aux = loss_and_grads(*MESHES[name])
        for k in ("ce", "mtp_ce", "weight", "mtp_weight"):
            np.testing.assert_allclose(aux[k], ref[k], rtol=1e-5, err_msg=f"{name} {k}")
        np.testing.assert_array_equal(aux["stats"]["moe_layers"]["load"], ref["stats"]["moe_layers"]["load"])
        assert float(np.sum(aux["stats"]["moe_layers"]["dropped"])) == 0  # dropless on every mesh
        flat_ref = jax.tree_util.tree_flatten_with_path(ref_g)[0]
        for (path, a), b in zip(flat_ref, jax.tree.leaves(g)):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5, err_msg=f"{name} {jax.tree_util.keystr(path)}")
