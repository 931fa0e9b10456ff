"""The declared key map round-trips exactly and refuses checkpoints of the wrong shape."""

import jax
import numpy as np
import pytest

from glm_jax import model
from glm_jax.convert import keymap
from tests.conftest import tiny_model


@pytest.mark.parametrize("naming", keymap.NAMINGS)
def test_round_trip_is_identity(naming):
    cfg = tiny_model(num_layers=3)
    params = jax.tree.map(np.array, model.init_params(cfg, jax.random.key(0)))
    params["layers"]["attn"]["q"]["bias"] += 1.0  # non-zero biases, so a mixed-up split shows
    tensors = dict(keymap.export_tensors(params, cfg, naming))
    assert list(tensors) == keymap.external_names(cfg, naming)
    back = keymap.import_tensors(tensors, cfg, naming)
    jax.tree.map(np.testing.assert_array_equal, params, back)


def test_thudm_fused_qkv_rows_are_q_then_k_then_v():
    cfg = tiny_model(num_layers=1)
    params = jax.tree.map(np.asarray, model.init_params(cfg, jax.random.key(0)))
    fused = dict(keymap.export_tensors(params, cfg, "thudm"))[
        "transformer.encoder.layers.0.self_attention.query_key_value.weight"]
    H, K, E, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    assert fused.shape == ((H + 2 * K) * E, D)
    k_rows = params["layers"]["attn"]["k"]["kernel"][0].reshape(D, K * E).T
    np.testing.assert_array_equal(fused[H * E:(H + K) * E], k_rows)


def test_wrong_config_names_the_first_mismatching_tensor():
    cfg = tiny_model()
    tensors = dict(keymap.export_tensors(jax.tree.map(np.asarray, model.init_params(cfg, jax.random.key(0))), cfg, "hf"))
    other = tiny_model(ffn_hidden_size=128)
    with pytest.raises(keymap.ConversionError, match=r"model.layers.0.mlp.gate_up_proj.weight.*\(192, 64\).*\(256, 64\)"):
        keymap.import_tensors(tensors, other, "hf")
    with pytest.raises(keymap.ConversionError, match="lacks .* 'model.layers.2.input_layernorm.weight'"):
        keymap.import_tensors(tensors, tiny_model(num_layers=3), "hf")
    rotary = {**tensors, "model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(4)}
    keymap.import_tensors(rotary, cfg, "hf")  # derived buffers are ignored
