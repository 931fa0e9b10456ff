"""Export to / import from HuggingFace checkpoint directories (transformers loads what we write)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import model
from glm_jax.convert import hf, keymap, safetensors_dir
from tests import hf_reference
from tests.conftest import tiny_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _random_params(cfg, seed=0):
    params = jax.tree.map(np.array, model.init_params(cfg, jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    for leaf in ("q", "k", "v"):  # non-zero biases so a wrong split would show
        params["layers"]["attn"][leaf]["bias"] = rng.normal(0, 0.1, params["layers"]["attn"][leaf]["bias"].shape
                                                            ).astype(np.float32)
    return params


def _greedy(params, cfg, prompt, n):
    fwd = jax.jit(model.forward, static_argnums=2)
    tokens = jnp.asarray(prompt)
    for _ in range(n):
        nxt = fwd(params, tokens, cfg)[:, -1].argmax(-1)
        tokens = jnp.concatenate([tokens, nxt[:, None].astype(tokens.dtype)], axis=1)
    return np.asarray(tokens)


@pytest.mark.parametrize("rope_ratio", [1.0, 500.0])
def test_exported_model_loads_in_transformers_and_matches(tmp_path, rope_ratio):
    cfg = tiny_model(rope_ratio=rope_ratio, num_layers=3)
    params = _random_params(cfg)
    out = str(tmp_path / "hf")
    hf.export(params, cfg, out, dtype="float32", max_shard_bytes=100_000)  # several shards
    index = json.load(open(os.path.join(out, safetensors_dir.INDEX)))
    assert len(set(index["weight_map"].values())) > 1
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert loaded.config.rope_parameters["rope_theta"] == 10000.0 * rope_ratio
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        theirs = loaded.eval()(torch.as_tensor(tokens)).logits.numpy()
    ours = np.asarray(model.forward(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens), cfg))
    assert np.abs(ours - theirs).max() <= 1e-4
    prompt = tokens[:1, :8]
    with torch.no_grad():
        hf_gen = loaded.generate(torch.as_tensor(prompt), max_new_tokens=20, do_sample=False, min_new_tokens=20)
    np.testing.assert_array_equal(_greedy(jax.tree.map(jnp.asarray, params), cfg, prompt, 20), hf_gen.numpy())


def test_from_transformers_saved_model_then_back_is_identical(tmp_path):
    cfg = tiny_model()
    src = str(tmp_path / "src")
    hf_reference.random_model(cfg).save_pretrained(src)
    params = hf.import_dir(src, cfg)
    again = str(tmp_path / "again")
    hf.export(params, cfg, again)
    (names_a, get_a), (names_b, get_b) = safetensors_dir.read_index(src), safetensors_dir.read_index(again)
    assert sorted(names_a) == sorted(names_b)
    for n in names_a:
        np.testing.assert_array_equal(get_a(n), get_b(n), err_msg=n)


def _official_glm4_keys(num_layers):
    """GLM-4-9B's model.safetensors.index.json key list, restricted to `num_layers` layers."""
    keys = ["transformer.embedding.word_embeddings.weight", "transformer.encoder.final_layernorm.weight",
            "transformer.output_layer.weight", "transformer.rotary_pos_emb.inv_freq"]
    for i in range(num_layers):
        p = f"transformer.encoder.layers.{i}."
        keys += [p + "input_layernorm.weight", p + "mlp.dense_4h_to_h.weight", p + "mlp.dense_h_to_4h.weight",
                 p + "post_attention_layernorm.weight", p + "self_attention.dense.weight",
                 p + "self_attention.query_key_value.bias", p + "self_attention.query_key_value.weight"]
    return sorted(keys)


def test_thudm_round_trip_and_official_key_list(tmp_path):
    cfg = tiny_model(num_layers=2)
    params = _random_params(cfg)
    out = str(tmp_path / "thudm")
    hf.export(params, cfg, out, naming="thudm")
    names, get = safetensors_dir.read_index(out)
    assert sorted(names) == _official_glm4_keys(2)  # including the derived rotary inv_freq buffer
    R = cfg.rotary_dim  # THUDM's RotaryEmbedding(kv_channels // 2): 1 / 10000^(2i / R)
    np.testing.assert_allclose(get("transformer.rotary_pos_emb.inv_freq"),
                               1.0 / 10000.0 ** (np.arange(0, R, 2) / R), rtol=1e-6)
    back = hf.import_dir(out, cfg)  # naming detected from the names
    jax.tree.map(np.testing.assert_array_equal, params, back)
    assert json.load(open(os.path.join(out, "config.json")))["multi_query_group_num"] == cfg.num_kv_heads


def test_bf16_export_is_read_back_in_fp32(tmp_path):
    cfg = tiny_model()
    params = _random_params(cfg)
    out = str(tmp_path / "bf16")
    hf.export(params, cfg, out, dtype="bfloat16")
    back = hf.import_dir(out, cfg)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-6), params, back)
    assert back["output"]["kernel"].dtype == np.float32


def test_wrong_config_is_refused_and_nothing_is_written(tmp_path):
    cfg = tiny_model()
    src = str(tmp_path / "src")
    hf.export(_random_params(cfg), cfg, src)
    os.remove(os.path.join(src, "config.json"))  # shapes alone must catch it
    wrong = tiny_model(vocab_size=256)  # e.g. ChatGLM3 weights under a GLM-4 config
    with pytest.raises(keymap.ConversionError, match=r"'model.embed_tokens.weight' has shape \(128, 64\).*\(256, 64\)"):
        hf.import_dir(src, wrong)
    with_config = str(tmp_path / "with_config")
    hf.export(_random_params(cfg), cfg, with_config)
    with pytest.raises(keymap.ConversionError,
                       match=r"rope_ratio=3.0 but config 'tiny' has model.rope_ratio=500.0.*fix model.rope_ratio"):
        hf.import_dir(with_config, tiny_model(rope_ratio=500.0))
    out = tmp_path / "out"
    with pytest.raises(keymap.ConversionError, match="naming"):
        hf.export(_random_params(cfg), cfg, str(out), naming="megatron")
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]
