"""config.json both ways from one table of numerics-changing fields; THUDM's config.json carries
every field of the released glm-4-9b-chat one; a THUDM checkpoint's fixed rotary is enforced."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from glm_jax import model
from glm_jax.convert import hf, hf_config
from glm_jax.convert.keymap import ConversionError
from tests import cli
from tests.conftest import REPO, tiny_model

# One changed value per FIELDS entry (each still a valid config).
CHANGED = {"vocab_size": 256, "hidden_size": 96, "num_layers": 3, "num_heads": 16, "kv_groups": 4, "head_dim": 32,
           "ffn_hidden_size": 128, "rms_norm_eps": 1e-6, "rope_ratio": 500.0, "rotary_fraction": 1.0,
           "qkv_bias": False, "post_norms": True}


def test_the_table_covers_every_numerics_changing_field():
    assert [f.attr for f in hf_config.FIELDS] == list(CHANGED)


@pytest.mark.parametrize("naming", ["hf", "thudm"])
def test_config_json_round_trips_through_the_table(naming):
    cfg = tiny_model(rope_ratio=3.0)
    written = hf_config.to_hf_config(cfg, naming, "bfloat16", [1, 2], 1)
    hf_config.check_against(written, cfg)
    back = hf_config.model_config_from_hf(written, name=cfg.name)
    assert back == dataclasses.replace(cfg, init_std=back.init_std)


@pytest.mark.parametrize("naming", ["hf", "thudm"])
@pytest.mark.parametrize("attr", sorted(CHANGED))
def test_each_field_that_disagrees_is_named(naming, attr):
    cfg = tiny_model(rope_ratio=3.0)
    written = hf_config.to_hf_config(cfg, naming, "float32")
    other = dataclasses.replace(cfg, **{attr: CHANGED[attr]})
    with pytest.raises(ConversionError, match=rf"fix model\.{attr} "):
        hf_config.check_against(written, other)


def test_fixed_structure_is_checked():
    cfg = tiny_model()
    with pytest.raises(ConversionError, match="tie_word_embeddings=True"):
        hf_config.check_against({**hf_config.to_hf_config(cfg, "hf", "float32"), "tie_word_embeddings": True}, cfg)
    with pytest.raises(ConversionError, match="rmsnorm=False"):
        hf_config.check_against({**hf_config.to_hf_config(cfg, "thudm", "float32"), "rmsnorm": False}, cfg)


# The released THUDM/glm-4-9b-chat config.json (huggingface.co/THUDM/glm-4-9b-chat, config.json at
# commit 731ca7fd937cff9f2ae5f01de85a0c8bf21df6fa): its 34 top-level fields.
RELEASED_GLM4_9B_CHAT_FIELDS = {
    "_name_or_path", "model_type", "architectures", "auto_map", "add_bias_linear", "add_qkv_bias",
    "apply_query_key_layer_scaling", "apply_residual_connection_post_layernorm", "attention_dropout",
    "attention_softmax_in_fp32", "bias_dropout_fusion", "ffn_hidden_size", "fp32_residual_connection",
    "hidden_dropout", "hidden_size", "kv_channels", "layernorm_epsilon", "multi_query_attention",
    "multi_query_group_num", "num_attention_heads", "num_hidden_layers", "num_layers", "rope_ratio",
    "original_rope", "padded_vocab_size", "post_layer_norm", "rmsnorm", "seq_length", "use_cache", "torch_dtype",
    "transformers_version", "tie_word_embeddings", "eos_token_id", "pad_token_id"}
RELEASED_AUTO_MAP_KEYS = {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM",
                          "AutoModelForSequenceClassification"}


def test_thudm_config_json_has_every_field_of_the_released_one(tmp_path):
    cfg = tiny_model(rope_ratio=500.0)
    out = str(tmp_path / "thudm")
    hf.export(jax.tree.map(np.asarray, model.init_params(cfg, jax.random.key(0))), cfg, out, naming="thudm",
              eos_token_ids=[100, 107, 109], pad_token_id=100)
    written = json.load(open(os.path.join(out, "config.json")))
    assert set(written) == RELEASED_GLM4_9B_CHAT_FIELDS
    assert set(written["auto_map"]) == RELEASED_AUTO_MAP_KEYS
    # hub remote-code form: THUDM's repo, then the module.Class the released auto_map names
    assert written["auto_map"]["AutoConfig"] == "THUDM/glm-4-9b-chat--configuration_chatglm.ChatGLMConfig"
    assert written["auto_map"]["AutoModelForCausalLM"] == \
        "THUDM/glm-4-9b-chat--modeling_chatglm.ChatGLMForConditionalGeneration"
    assert written["original_rope"] is True and written["rope_ratio"] == 500.0
    assert written["eos_token_id"] == [100, 107, 109] and written["pad_token_id"] == 100
    chatglm3 = hf_config.to_hf_config(cfg, "thudm", "bfloat16", thudm_code="chatglm3")
    assert chatglm3["auto_map"]["AutoModel"].startswith("THUDM/chatglm3-6b--modeling_chatglm.")


def _thudm_dir(tmp_path, cfg):
    out = str(tmp_path / "thudm")
    hf.export(jax.tree.map(np.asarray, model.init_params(cfg, jax.random.key(0))), cfg, out, naming="thudm")
    return out


def test_thudm_checkpoint_with_other_rotary_setting_is_refused(tmp_path):
    cfg = tiny_model()
    out = _thudm_dir(tmp_path, cfg)
    wrong = dataclasses.replace(cfg, rotary_fraction=1.0)
    with pytest.raises(ConversionError, match=r"rotary_fraction=0.5 but config 'tiny' has model.rotary_fraction=1.0"):
        hf.import_dir(out, wrong)
    os.remove(os.path.join(out, "config.json"))  # the THUDM names alone imply it
    with pytest.raises(ConversionError, match="fix model.rotary_fraction"):
        hf.import_dir(out, wrong)
    hf.import_dir(out, cfg)
    params = jax.tree.map(np.asarray, model.init_params(wrong, jax.random.key(0)))
    with pytest.raises(ConversionError, match="fix model.rotary_fraction"):  # nor is it exported so
        hf.export(params, wrong, str(tmp_path / "x"), naming="thudm")
    assert not (tmp_path / "x").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]


def test_from_hf_cli_refuses_rotary_fraction_for_a_thudm_checkpoint(tmp_path):
    from glm_jax import config

    cfg = config.load(os.path.join(REPO, "configs", "debug.py")).model
    src, out = _thudm_dir(tmp_path, dataclasses.replace(cfg, num_layers=1)), tmp_path / "ckpt"
    proc = cli.run("-m", "glm_jax.convert", "from-hf", f"--hf={src}", "--config=configs/debug.py",
                   "--config.model.num_layers=1", "--config.model.rotary_fraction=1.0", f"--out={out}", timeout=300,
                   check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "fix model.rotary_fraction" in proc.stderr
    assert not out.exists()
