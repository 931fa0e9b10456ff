"""GLM-4-0414 in and out: transformers' Glm4ForCausalLM -> ours -> back is exact; a trained
post-norm model exports to a checkpoint transformers runs with the same logits and tokens."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import config, model
from glm_jax.convert import hf, hf_config, keymap, safetensors_dir
from glm_jax.model import sampling
from glm_jax.train import checkpoint, loop
from tests import hf_reference
from tests.conftest import REPO, tiny_model
from tests.train import synthetic

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_transformers_saved_glm4_from_hf_to_hf_is_identical(tmp_path):
    cfg = tiny_model(num_layers=3, rope_ratio=3.0, post_norms=True)
    src = str(tmp_path / "src")
    hf_reference.random_model(cfg).save_pretrained(src)
    saved = json.load(open(os.path.join(src, "config.json")))
    hf_config.check_against(saved, cfg)  # transformers' own config.json agrees with ours, field by field
    read = hf_config.model_config_from_hf(saved, name=cfg.name)
    assert all(getattr(read, f.attr) == getattr(cfg, f.attr) for f in hf_config.FIELDS)
    params = hf.import_dir(src, cfg)
    assert set(params["layers"]) >= {"attn_post_norm", "mlp_post_norm"}
    again = str(tmp_path / "again")
    hf.export(params, cfg, again, dtype="float32")
    (names_a, get_a), (names_b, get_b) = safetensors_dir.read_index(src), safetensors_dir.read_index(again)
    assert sorted(names_a) == sorted(names_b)
    for n in names_a:
        np.testing.assert_array_equal(get_a(n), get_b(n), err_msg=n)
    ours = json.load(open(os.path.join(again, "config.json")))
    assert ours["architectures"] == ["Glm4ForCausalLM"] and ours["model_type"] == "glm4"
    loaded = transformers.AutoConfig.from_pretrained(again)  # and transformers reads ours back
    assert type(loaded).__name__ == "Glm4Config"
    assert hf_config.model_config_from_hf(ours, name=cfg.name) == read


def test_thudm_naming_refuses_post_norms_and_writes_nothing(tmp_path):
    cfg = tiny_model(post_norms=True)
    params = jax.tree.map(np.asarray, model.init_params(cfg, jax.random.key(0)))
    out = tmp_path / "thudm"
    with pytest.raises(keymap.ConversionError, match="model.post_norms"):
        hf.export(params, cfg, str(out), naming="thudm")
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]


SMALL_0414 = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.vocab_size=512",
              "model.num_heads=4", "model.kv_groups=2", "model.head_dim=16", "model.rope_ratio=3.0",
              "model.rms_norm_eps=1e-5", "model.post_norms=True", "train.seq_len=64", "train.batch_size=8",
              "train.steps=4", "train.warmup_steps=1", "train.lr=3e-3", "mesh.fsdp=4", "mesh.tensor=2",
              "checkpoint.every_steps=4", "checkpoint.async_save=False"]


def test_trained_0414_model_exports_to_transformers_with_same_logits_and_tokens(tmp_path):
    cd = config.apply_overrides(config.load_config_dict(os.path.join(REPO, "configs", "debug.py")), SMALL_0414)
    workdir = str(tmp_path / "run")
    loop.run(cd, workdir, make_iterator=synthetic.make_iterator)
    params, cfg = checkpoint.restore_params(workdir)
    initial = model.init_params(cfg.model, jax.random.key(cfg.train.seed))
    assert not np.allclose(params["layers"]["mlp_post_norm"]["scale"], 1.0)  # trained, norms included
    assert not np.allclose(params["output"]["kernel"], initial["output"]["kernel"])
    out = str(tmp_path / "hf")
    hf.export(params, cfg.model, out, dtype="float32")
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(loaded).__name__ == "Glm4ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 48))
    with torch.no_grad():
        theirs = loaded.eval()(torch.as_tensor(tokens)).logits.numpy()
    ours = np.asarray(model.forward(params, jnp.asarray(tokens), cfg.model))
    assert np.abs(ours - theirs).max() <= 1e-4, np.abs(ours - theirs).max()
    prompt = tokens[:1, :8]
    ours_gen = sampling.generate(params, cfg.model, prompt.tolist(), 20)[0]  # KV-cache decoding
    with torch.no_grad():
        hf_gen = loaded.generate(torch.as_tensor(prompt), max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert ours_gen == hf_gen[0, 8:].tolist()
