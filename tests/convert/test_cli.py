"""`python -m glm_jax.convert`: a trained debug model goes to transformers and back, exactly."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import model
from glm_jax.convert import safetensors_dir
from glm_jax.train.checkpoint import restore_params
from tests import cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cli.run("-m", "glm_jax.train", "--config=configs/debug.py", f"--workdir={workdir}", "--config.train.steps=6",
            "--config.train.seq_len=128", "--config.checkpoint.every_steps=3", "--config.checkpoint.async_save=False",
            "--config.mesh.fsdp=4", "--config.mesh.tensor=2")
    return workdir


@pytest.mark.slow
def test_to_hf_of_a_trained_run_matches_in_transformers(trained, tmp_path):
    out = tmp_path / "hf"
    cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={trained}", f"--out={out}", "--dtype=float32")
    params, cfg = restore_params(str(trained))
    assert int(jax.device_get(params["output"]["kernel"]).std() * 1e6) != int(0.02 * 1e6)  # trained, not init
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = transformers.AutoTokenizer.from_pretrained(str(out))  # the tokenizer ships with the weights
    ids = tok("The pass key is 12345. 你好，世界！")["input_ids"]
    from glm_jax.data.tokenizer import bundled_tokenizer

    assert ids == bundled_tokenizer().encode("The pass key is 12345. 你好，世界！")
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 64))
    with torch.no_grad():
        theirs = hf_model.eval()(torch.as_tensor(tokens)).logits.numpy()
    ours = np.asarray(model.forward(params, jnp.asarray(tokens), cfg.model))
    assert np.abs(ours - theirs).max() <= 1e-4
    from glm_jax.model import sampling

    prompt = tokens[:1, :10]
    ours_gen = sampling.generate(params, cfg.model, prompt.tolist(), 20)[0]
    with torch.no_grad():
        hf_gen = hf_model.generate(torch.as_tensor(prompt), max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert ours_gen == hf_gen[0, 10:].tolist()
    assert hf_model.generation_config.eos_token_id == [4086, 4093, 4095]  # <|endoftext|>, <|user|>, <|observation|>


@pytest.mark.slow
def test_from_hf_then_to_hf_is_identical_and_trains_from_it(trained, tmp_path):
    first, ckpt, second = tmp_path / "a", tmp_path / "ckpt", tmp_path / "b"
    cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={trained}", f"--out={first}", "--dtype=float32",
            "--naming=thudm")
    cli.run("-m", "glm_jax.convert", "from-hf", f"--hf={first}", "--config=configs/debug.py", f"--out={ckpt}")
    cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={ckpt}", f"--out={second}", "--dtype=float32",
            "--naming=thudm")
    (na, ga), (nb, gb) = safetensors_dir.read_index(str(first)), safetensors_dir.read_index(str(second))
    assert sorted(na) == sorted(nb)
    for n in na:
        np.testing.assert_array_equal(ga(n), gb(n), err_msg=n)
    # the imported checkpoint starts a run
    cli.run("-m", "glm_jax.train", "--config=configs/debug.py", f"--workdir={tmp_path / 'run2'}",
            "--config.train.steps=1", "--config.train.seq_len=128", f"--config.train.init_from={ckpt}")


def test_wrong_config_is_named_and_nothing_written(trained, tmp_path):
    hf_dir, out = tmp_path / "hf", tmp_path / "out"
    cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={trained}", f"--out={hf_dir}", "--dtype=bfloat16")
    proc = cli.run("-m", "glm_jax.convert", "from-hf", f"--hf={hf_dir}", "--config=configs/chatglm3_6b.py",
                   f"--out={out}", check=False)
    assert proc.returncode == 2
    assert "vocab_size=4096 but config 'chatglm3_6b' has model.vocab_size=65024" in proc.stderr
    os.remove(hf_dir / "config.json")  # without config.json the shapes name the first bad tensor
    proc = cli.run("-m", "glm_jax.convert", "from-hf", f"--hf={hf_dir}", "--config=configs/chatglm3_6b.py",
                   f"--out={out}", check=False)
    assert proc.returncode == 2
    assert "checkpoint lacks 264 tensor(s) the config needs, first: 'model.layers.4.input_layernorm.weight'" in proc.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]
