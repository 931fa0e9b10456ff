"""`python -m glm_jax.generate`: sharded KV-cache generation from a checkpoint or a HF directory."""

import json

import jax
import pytest

from glm_jax import model
from glm_jax.convert import hf
from glm_jax.data.tokenizer import bundled_tokenizer
from glm_jax.generate import prompt_ids
from glm_jax.model import sampling
from glm_jax.train.checkpoint import save_params
from tests import cli



def _generate(*flags):
    proc = cli.run("-m", "glm_jax.generate", *flags, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_chat_prompt_is_a_user_turn_opening_the_assistant():
    vocab = bundled_tokenizer()
    ids = prompt_ids(vocab, "你好", chat=True)
    assert ids[:3] == [vocab.special_id("[gMASK]"), vocab.special_id("<sop>"), vocab.special_id("<|user|>")]
    assert ids[-1] == vocab.special_id("<|assistant|>") and vocab.decode(ids[3:-1]) == "\n你好"


@pytest.mark.slow
def test_cli_from_checkpoint_and_from_hf_equal_in_process_generation(debug_cfg, tmp_path):
    params = model.init_params(debug_cfg.model, jax.random.key(0))
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 2 else x, params)  # sharper logits
    save_params(str(tmp_path / "ckpt"), params, debug_cfg)
    hf.export(jax.tree.map(lambda x: jax.device_get(x), params), debug_cfg.model, str(tmp_path / "hf"))
    vocab = bundled_tokenizer()
    (tmp_path / "hf" / "tokenizer.tiktoken").write_bytes(open(vocab.path, "rb").read())
    prompts = ["The Python interpreter", "床前明月光"]
    want = sampling.generate(params, debug_cfg.model, [prompt_ids(vocab, p, False) for p in prompts], 16,
                             stop_ids=[vocab.special_id("<|endoftext|>")])
    common = [f"--prompt={p}" for p in prompts] + ["--max_new_tokens=16"]
    from_ckpt = _generate(f"--workdir={tmp_path / 'ckpt'}", "--mesh_fsdp=4", "--mesh_tensor=2", *common)
    from_hf = _generate(f"--hf={tmp_path / 'hf'}", *common)
    assert [r["ids"] for r in from_ckpt] == want == [r["ids"] for r in from_hf]
    assert [r["prompt"] for r in from_ckpt] == prompts and all(isinstance(r["completion"], str) for r in from_ckpt)
