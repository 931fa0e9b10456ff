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

    from glm_jax import config, sharding, weights
    from glm_jax.data.tokenizer import END_TOKENS
    from glm_jax.model import sampling

    mesh = sharding.make_mesh(config.MeshConfig(fsdp=_FSDP.value, tensor=_TENSOR.value))
    loaded = weights.load(workdir=_WORKDIR.value, step=_STEP.value, hf=_HF.value, mesh=mesh)
    params, cfg, run, vocab = loaded.params, loaded.cfg, loaded.run, loaded.vocab
    stop = [vocab.special_id(t) for t in (END_TOKENS if _CHAT.value else END_TOKENS[:1])]
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
