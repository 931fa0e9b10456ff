"""GLM-4.5 in and out: a transformers-saved Glm4Moe checkpoint (per-expert tensors, correction
biases, plus an MTP layer at index num_hidden_layers as the released ones carry) -> ours (through
the streamed params checkpoint that from-hf writes) -> to-hf is bit-identical; transformers runs our
export with the same logits."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from glm_jax import config, model
from glm_jax.convert import hf, hf_config, keymap, safetensors_dir
from glm_jax.train import checkpoint
from tests import hf_reference
from tests.conftest import tiny_moe

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def with_mtp_layer(src: str, cfg, seed=5) -> dict:
    """Adds random MTP tensors (model.layers.L.{embed_tokens, enorm, hnorm, eh_proj, shared_head.*,
    the decoder layer}) to the single-file checkpoint transformers saved at `src`, as the released
    GLM-4.5 checkpoints carry them; returns them."""
    names, get = safetensors_dir.read_index(src)
    tensors = {n: get(n) for n in names}
    rng = np.random.default_rng(seed)
    prefix = f"model.layers.{cfg.num_layers}."
    shapes = {name: keymap.external_shape(m, cfg) for name, m, _, _ in keymap._expanded(keymap.tensor_maps(cfg, "hf"),
                                                                                          cfg)}
    mtp = {n: (rng.standard_normal(s) * 0.1).astype(np.float32) for n, s in shapes.items() if n.startswith(prefix)}
    os.remove(os.path.join(src, safetensors_dir.SINGLE))
    save_file({**tensors, **mtp}, os.path.join(src, safetensors_dir.SINGLE), metadata={"format": "pt"})
    return mtp


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = tiny_moe(mtp_layers=1)
    src = str(tmp_path_factory.mktemp("glm4moe_src"))
    hf_model = hf_reference.random_model(cfg, seed=2)
    hf_model.save_pretrained(src)
    mtp = with_mtp_layer(src, cfg)
    return cfg, src, hf_model, mtp


def test_transformers_saved_glm4moe_with_mtp_from_hf_to_hf_is_identical(saved, tmp_path):
    cfg, src, _, mtp = saved
    hf_json = json.load(open(os.path.join(src, "config.json")))
    hf_config.check_against(hf_json, cfg)  # transformers' own config.json agrees with ours, field by field
    assert hf_config.model_config_from_hf(hf_json, name=cfg.name) == dataclasses.replace(
        cfg, max_seq_len=hf_json["max_position_embeddings"])
    names = set(safetensors_dir.read_index(src)[0])
    assert {f"model.layers.1.mlp.experts.{e}.up_proj.weight" for e in range(cfg.moe.num_experts)} <= names
    assert "model.layers.2.mlp.gate.e_score_correction_bias" in names and len(mtp) > 20
    # from-hf: streamed into a params checkpoint a layer at a time (both stacks and the MTP module)
    full = config.Config(model=cfg)
    ckpt = str(tmp_path / "ckpt")
    checkpoint.save_params(ckpt, hf.dir_reader(src, cfg), full)
    directory, restored_cfg = checkpoint.locate_params(ckpt)
    assert restored_cfg.model == cfg
    # to-hf from the checkpoint reader, fp32
    again = str(tmp_path / "again")
    hf.export(checkpoint.param_reader(directory), cfg, again, dtype="float32")
    (names_a, get_a), (names_b, get_b) = safetensors_dir.read_index(src), safetensors_dir.read_index(again)
    assert sorted(names_a) == sorted(names_b)
    for n in names_a:
        np.testing.assert_array_equal(get_a(n), get_b(n), err_msg=n)  # MTP weights included, bit for bit
    ours = json.load(open(os.path.join(again, "config.json")))
    assert ours["model_type"] == "glm4_moe" and ours["num_nextn_predict_layers"] == 1
    assert type(transformers.AutoConfig.from_pretrained(again)).__name__ == "Glm4MoeConfig"


def test_transformers_runs_our_glm4moe_export_with_same_logits(saved, tmp_path):
    cfg, src, hf_model, _ = saved
    params = hf.import_dir(src, cfg)
    out = str(tmp_path / "out")
    hf.export(params, cfg, out, dtype="float32")
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(loaded).__name__ == "Glm4MoeForCausalLM"
    assert not info["missing_keys"], info
    # transformers drops the MTP layer: what it skips is exactly that layer
    assert all(k.startswith(f"model.layers.{cfg.num_layers}.") for k in info["unexpected_keys"]), info
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 32))
    ours = np.asarray(model.forward(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens), cfg))
    theirs = hf_reference.logits(loaded.eval(), tokens)
    assert np.abs(ours - theirs).max() <= 1e-4
    np.testing.assert_allclose(theirs, hf_reference.logits(hf_model, tokens), atol=1e-5)


def test_mtp_layer_without_mtp_config_names_the_field(saved):
    cfg, src, _, _ = saved
    with pytest.raises(keymap.ConversionError, match="mtp_layers"):
        hf.import_dir(src, dataclasses.replace(cfg, mtp_layers=0))

