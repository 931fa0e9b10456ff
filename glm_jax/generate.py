"""Generate text with a trained or imported GLM: KV-cache decoding, batched prompts, chat format.

    python -m glm_jax.generate --workdir=DIR --prompt="The Python interpreter" [--prompt=...]
    python -m glm_jax.generate --hf=HF_DIR --chat --prompt="你好" --temperature=0.8 --top_p=0.9

--workdir: a training workdir or params-only checkpoint (its tokenizer comes from its data
config); --hf: a HuggingFace/THUDM directory (its config.json and tokenizer file). --chat renders
each prompt as a user turn of the GLM-4 chat format and stops at the next role token. Runs on
every local device: params sharded by the rule table (--mesh_fsdp / --mesh_tensor), prompts
replicated.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from glm_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir or params-only checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_HF = flags.DEFINE_string("hf", None, "HuggingFace / THUDM checkpoint directory.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Prompt text; repeat for a batch.")
_CHAT = flags.DEFINE_bool("chat", False, "Render prompts as chat user turns; stop at role tokens.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 = off.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "1.0 = off.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_FSDP = flags.DEFINE_integer("mesh_fsdp", -1, "fsdp axis of the decoding mesh (-1: all devices).")
_TENSOR = flags.DEFINE_integer("mesh_tensor", 1, "tensor axis of the decoding mesh.")


def _load_hf(hf_dir: str):
    from glm_jax.config import RunConfig
    from glm_jax.convert import hf, hf_config
    from glm_jax.data.tokenizer import load_tokenizer

    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = hf_config.model_config_from_hf(json.load(f), name=os.path.basename(os.path.normpath(hf_dir)))
    params = hf.import_dir(hf_dir, cfg)
    files = [p for p in ("tokenizer.tiktoken", "tokenizer.model") if os.path.isfile(os.path.join(hf_dir, p))]
    if not files:
        raise FileNotFoundError(f"{hf_dir} has no tokenizer.tiktoken or tokenizer.model: cannot tokenize prompts")
    return params, cfg, RunConfig(), load_tokenizer(os.path.join(hf_dir, files[0]))


def _load_workdir(workdir: str, step):
    from glm_jax.data.loader import vocabulary
    from glm_jax.train.checkpoint import restore_params

    params, cfg = restore_params(workdir, step)
    return params, cfg.model, cfg.run, vocabulary(cfg)


def prompt_ids(vocab, text: str, chat: bool) -> list[int]:
    """Token ids of a prompt: chat renders a user turn and opens the assistant's."""
    if not chat:
        return [vocab.special_id("[gMASK]"), vocab.special_id("<sop>"), *vocab.encode(text)]
    from glm_jax.data import chat as chat_lib

    # Render with an empty reply and keep everything up to its <|assistant|>: the model writes the rest.
    ids, _ = chat_lib.render({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]},
                             vocab)
    ids = ids.tolist()
    return ids[:len(ids) - ids[::-1].index(vocab.special_id("<|assistant|>"))]


def main(argv):
    del argv
    if bool(_WORKDIR.value) == bool(_HF.value):
        raise app.UsageError("pass exactly one of --workdir or --hf")
    if not _PROMPT.value:
        raise app.UsageError("pass at least one --prompt")
    import jax

    from glm_jax import config, model, sharding
    from glm_jax.model import sampling

    params, cfg, run, vocab = _load_hf(_HF.value) if _HF.value else _load_workdir(_WORKDIR.value, _STEP.value)
    mesh = sharding.make_mesh(config.MeshConfig(fsdp=_FSDP.value, tensor=_TENSOR.value))
    params = jax.device_put(params, sharding.tree_shardings(mesh, model.param_specs(cfg)))
    stop = [vocab.special_id("<|endoftext|>")]
    if _CHAT.value:
        stop += [vocab.special_id(t) for t in ("<|user|>", "<|observation|>")]
    prompts = [prompt_ids(vocab, p, _CHAT.value) for p in _PROMPT.value]
    s = sampling.Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
    with jax.set_mesh(mesh):
        outs = sampling.generate(params, cfg, prompts, _MAX_NEW.value, s, stop_ids=stop, key=jax.random.key(_SEED.value),
                                   run=run)
    for text, out in zip(_PROMPT.value, outs):
        shown = [t for t in out if t not in stop]
        print(json.dumps({"prompt": text, "completion": vocab.decode(shown), "ids": out}, ensure_ascii=False))


if __name__ == "__main__":
    cli.run(main)
