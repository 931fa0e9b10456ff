"""A checkpoint's tokenizer travels with it: from-hf keeps it, a run from the checkpoint uses it,
to-hf ships it with its stop / pad ids; a tokenizer the weights were not made for is refused."""

import json
import os

import jax
import numpy as np
import pytest

from glm_jax import config, model
from glm_jax.convert import hf, safetensors_dir
from glm_jax.data.tokenizer import BUNDLED_TOKENIZER, GLMTokenizer
from glm_jax.train import checkpoint
from tests import cli
from tests.conftest import REPO

transformers = pytest.importorskip("transformers")

TEXT = "The pass key is 12345. 你好，世界！GLM-4 的分词器。"
# A GLM-4-shaped model whose vocabulary is padded for a 1,000-rank tokenizer (1,010 ids with the specials).
MODEL = ["model.vocab_size=1024", "model.num_layers=1", "model.hidden_size=64", "model.ffn_hidden_size=128"]


def _small_tiktoken(path):
    """A GLM-4-format tiktoken file of 1,000 ranks: the first ranks of the bundled one (the 256
    single bytes, then merges in rank order, so it is a complete BPE of its own)."""
    with open(BUNDLED_TOKENIZER, "rb") as f:
        lines = f.readlines()[:1000]
    with open(path, "wb") as f:
        f.writelines(lines)
    return path


@pytest.mark.slow
def test_tokenizer_goes_from_hf_through_training_to_hf(tmp_path):
    cfg = config.load(os.path.join(REPO, "configs", "debug.py"), MODEL)
    src = tmp_path / "src"  # a released-style HF dir: weights, config.json and the GLM-4 tokenizer.model
    hf.export(jax.tree.map(np.asarray, model.init_params(cfg.model, jax.random.key(0))), cfg.model, str(src),
              dtype="float32")
    source_tok = GLMTokenizer(_small_tiktoken(str(src / "tokenizer.model")))
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    ckpt, run, out = tmp_path / "ckpt", tmp_path / "run", tmp_path / "hf"
    overrides = [f"--config.{o}" for o in MODEL]
    cli.run("-m", "glm_jax.convert", "from-hf", f"--hf={src}", "--config=configs/debug.py", *overrides,
            f"--out={ckpt}")
    assert sorted(os.listdir(ckpt / "tokenizer")) == ["generation_config.json", "tokenizer.model",
                                                      "tokenizer_config.json"]
    cli.run("-m", "glm_jax.train", "--config=configs/debug.py", f"--workdir={run}", *overrides,
            "--config.train.steps=2", "--config.train.seq_len=64", f"--config.train.init_from={ckpt}",
            f"--config.data.cache_dir={tmp_path / 'c'}", "--config.checkpoint.async_save=False")
    recorded = json.load(open(run / "config.json"))["stages"][0]["config"]["data"]["tokenizer"]
    assert recorded == str(ckpt / "tokenizer" / "tokenizer.model")  # the run tokenized with the weights' tokenizer
    cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={run}", f"--out={out}", "--dtype=float32")
    exported = transformers.AutoTokenizer.from_pretrained(str(out))
    assert exported(TEXT)["input_ids"] == source_tok.encode(TEXT)
    assert exported(TEXT)["input_ids"] != GLMTokenizer(BUNDLED_TOKENIZER).encode(TEXT)  # not the bundled one
    stops = [source_tok.special_id(s) for s in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    assert stops == [1000, 1007, 1009]
    generation = json.load(open(out / "generation_config.json"))
    assert generation["eos_token_id"] == stops and generation["pad_token_id"] == 1000
    hf_cfg = json.load(open(out / "config.json"))
    assert hf_cfg["eos_token_id"] == stops and hf_cfg["pad_token_id"] == 1000
    assert exported.eos_token_id == 1000 and exported.pad_token_id == 1000

    # A tokenizer the weights were not made for (the bundled 4,096 ids for a 1,024 vocabulary).
    bad = tmp_path / "bad"
    proc = cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={run}", f"--out={bad}",
                   f"--tokenizer={BUNDLED_TOKENIZER}", check=False)
    assert proc.returncode == 2
    assert "config field `data.tokenizer`" in proc.stderr and "--tokenizer=FILE" in proc.stderr
    assert not bad.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]


def test_export_of_a_run_whose_tokenizer_does_not_fit_fails_naming_the_field(tmp_path):
    # configs/glm4_9b_chat.py with default data in small: a vocabulary padded for another tokenizer
    # than the run's bundled one (4,096 ids), as released weights are.
    cfg = config.load(os.path.join(REPO, "configs", "debug.py"), ["model.vocab_size=8192", *MODEL[1:]])
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    checkpoint.save_params(str(ckpt), model.init_params(cfg.model, jax.random.key(0)), cfg)
    proc = cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={ckpt}", f"--out={out}", check=False)
    assert proc.returncode == 2
    assert "config field `data.tokenizer`" in proc.stderr and "model.vocab_size=8192" in proc.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]


def test_a_checkpoint_imported_without_tokenizer_exports_its_weights_only_when_asked(tmp_path):
    """Weights whose source had no tokenizer files: to-hf never ships the config's data tokenizer
    (here the bundled one, which fits the debug vocabulary) and says how to export; --tokenizer=none
    exports weights and configs alone."""
    cfg = config.load(os.path.join(REPO, "configs", "debug.py"), MODEL[1:])  # debug vocabulary: the bundled fits
    src, ckpt, refused, out = tmp_path / "src", tmp_path / "ckpt", tmp_path / "refused", tmp_path / "hf"
    hf.export(jax.tree.map(np.asarray, model.init_params(cfg.model, jax.random.key(0))), cfg.model, str(src),
              dtype="float32")
    assert not [n for n in os.listdir(src) if n.startswith("tokenizer")]
    imported = cli.run("-m", "glm_jax.convert", "from-hf", f"--hf={src}", "--config=configs/debug.py",
                    *[f"--config.{o}" for o in MODEL[1:]], f"--out={ckpt}")
    assert "to-hf of it needs --tokenizer=FILE or --tokenizer=none" in imported.stdout
    proc = cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={ckpt}", f"--out={refused}", check=False)
    assert proc.returncode == 2 and "no tokenizer of its own" in proc.stderr, proc.stderr[-2000:]
    assert "--tokenizer=none" in proc.stderr and "--tokenizer=FILE" in proc.stderr
    assert not refused.exists()
    proc = cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={ckpt}", f"--out={out}", "--tokenizer=none",
                "--dtype=float32")
    assert "weights and configs only (no tokenizer)" in proc.stdout
    assert {"config.json", "generation_config.json"} <= set(os.listdir(out))
    assert not [n for n in os.listdir(out) if n.startswith("tokenizer")]
    assert "eos_token_id" not in json.load(open(out / "generation_config.json"))
    (na, ga), (nb, gb) = (safetensors_dir.read_index(str(d)) for d in (src, out))
    assert sorted(na) == sorted(nb) and all(np.array_equal(ga(n), gb(n)) for n in na)


def _tokenizer_json(tiktoken_path, out_path):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from glm_jax.data.tokenizer import GLM_SPECIAL_TOKENS, SPLIT_PATTERN

    TikTokenConverter(vocab_file=tiktoken_path, pattern=SPLIT_PATTERN,
                      extra_special_tokens=list(GLM_SPECIAL_TOKENS)).converted().save(out_path)
    return out_path


def test_a_transformers_only_tokenizer_is_kept_as_its_tiktoken_file(tmp_path):
    # GLM-4-0414 ships tokenizer.json, no tokenizer.model: from-hf recovers the tiktoken file exactly
    cfg = config.load(os.path.join(REPO, "configs", "debug.py"), MODEL)
    src, ckpt = tmp_path / "src", tmp_path / "ckpt"
    hf.export(jax.tree.map(np.asarray, model.init_params(cfg.model, jax.random.key(0))), cfg.model, str(src))
    small = _small_tiktoken(str(tmp_path / "small.tiktoken"))
    _tokenizer_json(small, str(src / "tokenizer.json"))
    cli.run("-m", "glm_jax.convert", "from-hf", f"--hf={src}", "--config=configs/debug.py",
            *[f"--config.{o}" for o in MODEL], f"--out={ckpt}")
    from glm_jax.data.tokenizer import checkpoint_tokenizer

    kept = checkpoint_tokenizer(str(ckpt))
    assert kept == str(ckpt / "tokenizer" / "tokenizer.tiktoken")
    assert open(kept, "rb").read() == open(small, "rb").read()


def test_tokenizer_json_that_is_not_glm4s_is_refused(tmp_path):
    from glm_jax.data.errors import DataError
    from glm_jax.data.tokenizer import tiktoken_from_tokenizer_json

    path = _tokenizer_json(_small_tiktoken(str(tmp_path / "small.tiktoken")), str(tmp_path / "tokenizer.json"))
    tok = json.load(open(path))
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+"
    json.dump(tok, open(tmp_path / "other_split.json", "w"))
    with pytest.raises(DataError, match="pre-tokenizer split"):
        tiktoken_from_tokenizer_json(str(tmp_path / "other_split.json"), str(tmp_path / "x"))
    tok = json.load(open(path))
    tok["model"]["merges"] = tok["model"]["merges"][::-1]
    json.dump(tok, open(tmp_path / "merges.json", "w"))
    with pytest.raises(DataError, match="rank order"):
        tiktoken_from_tokenizer_json(str(tmp_path / "merges.json"), str(tmp_path / "x"))


def test_a_run_from_a_checkpoint_uses_its_tokenizer_unless_the_config_names_one(tmp_path):
    import dataclasses

    from glm_jax.train import loop

    (tmp_path / "tokenizer").mkdir()
    kept = _small_tiktoken(str(tmp_path / "tokenizer" / "tokenizer.model"))
    cfg = config.load(os.path.join(REPO, "configs", "debug.py"), [f"train.init_from={str(tmp_path)!r}"])
    assert loop._with_checkpoint_tokenizer(cfg).data.tokenizer == kept
    named = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=BUNDLED_TOKENIZER))
    assert loop._with_checkpoint_tokenizer(named).data.tokenizer == BUNDLED_TOKENIZER
    fresh = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=""))
    assert loop._with_checkpoint_tokenizer(fresh).data.tokenizer == ""
