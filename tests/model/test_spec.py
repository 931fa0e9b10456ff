"""Parameter counts and shapes come from the spec tree without allocating weights."""

import functools
import math
import os

import jax
import pytest

from glm_jax import config, model
from tests import cli
from tests.conftest import REPO, tiny_model

# GLM-4-9B: the official index's 9,399,951,392 also counts the 32-value rotary inv_freq buffer.
EXPECTED = {"glm4_9b": 9_399_951_360, "glm4_9b_chat": 9_399_951_360, "chatglm3_6b": 6_243_584_000,
            "glm4_9b_chat_1m": 9_483_857_920}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_count_of_released_sizes(name):
    cfg = config.load(os.path.join(REPO, "configs", f"{name}.py")).model
    assert model.param_count(cfg) == EXPECTED[name]
    shapes = jax.eval_shape(functools.partial(model.init_params, cfg), jax.random.key(0))  # nothing allocated
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == EXPECTED[name]
    assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == \
        jax.tree.map(lambda s: (s.shape, s.dtype), model.abstract_params(cfg))


def test_rope_theta_is_derived_from_rope_ratio():
    chat = config.load(os.path.join(REPO, "configs", "glm4_9b_chat.py")).model
    one_m = config.load(os.path.join(REPO, "configs", "glm4_9b_chat_1m.py")).model
    assert chat.rope_theta == 5_000_000 and one_m.rope_theta == 100_000_000
    assert one_m.num_kv_heads == 4 and one_m.max_seq_len == 1_048_576 and chat.rotary_dim == 64


def test_debug_model_is_a_few_million_params(debug_cfg):
    assert 1e6 < model.param_count(debug_cfg.model) < 2e7


def test_init_is_deterministic_and_every_leaf_has_logical_axes():
    cfg = tiny_model()
    a, b = model.init_params(cfg, jax.random.key(0)), model.init_params(cfg, jax.random.key(0))
    jax.tree.map(lambda x, y: (x == y).all() or pytest.fail("init not deterministic"), a, b)
    axes = model.logical_axes(cfg)
    jax.tree.map(lambda x, ax: len(ax) == x.ndim or pytest.fail(f"{ax} vs {x.shape}"), a, axes,
                 is_leaf=lambda t: isinstance(t, tuple))


def test_cli_prints_table_and_count_without_allocating():
    out = cli.run("-m", "glm_jax.model", f"--config={REPO}/configs/glm4_9b.py").stdout
    assert "total parameters: 9,399,951,360" in out
    assert "layers.attn.q.kernel" in out and "40x4096x32x128" in out and "layers,embed,heads,head_dim" in out


def test_stacked_leaves_are_exactly_those_with_a_leading_layers_axis():
    from glm_jax.convert import keymap
    from glm_jax.model import spec

    cfg = tiny_model(post_norms=True)
    flat = jax.tree_util.tree_flatten_with_path(spec.param_specs(cfg), is_leaf=lambda x: isinstance(x, spec.ParamSpec))
    for kp, s in flat[0]:
        path = tuple(k.key for k in kp)
        assert spec.is_stacked(path) == (s.logical_axes[0] == "layers"), path
    # the key map derives "per layer" from it, and a name that disagrees is a declaration error
    with pytest.raises(AssertionError, match="per-layer name"):
        keymap.TensorMap("model.norm.{i}.weight", (("final_norm", "scale"),), None, None)
    with pytest.raises(AssertionError, match="per-layer name"):
        keymap.TensorMap("model.input_layernorm.weight", (("layers", "attn_norm", "scale"),), None, None)
