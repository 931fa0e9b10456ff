"""Post-training as stages: SFT on chat data, then DPO on preference pairs against the SFT result.

    python -m glm_jax.train --config=configs/post_train.py:model=debug --workdir=/tmp/post
    # 8 devices: the debug DPO batch is 2 rows, so --config.mesh.fsdp=2 --config.mesh.tensor=4
    python -m glm_jax.convert from-hf --hf=glm-4-9b-chat-hf/ --config=configs/glm4_9b_chat.py --out=CKPT
    python -m glm_jax.train --config=configs/post_train.py:model=glm4_9b_chat --workdir=gs://... \
        --config.train.init_from=CKPT --config.stages.sft.data.mixture=MY_SFT \
        --config.stages.dpo.data.mixture=MY_PREFS

Stage `sft` (train.objective=lm): packed chat conversations, loss on what the assistant says
(glm_jax/data/chat.py); it starts from `train.init_from` (or random params for the debug model).
Stage `dpo` (train.objective=dpo): chosen/rejected pairs (glm_jax/data/preference.py), sigmoid
DPO loss with beta 0.1; its reference policy is `sft`'s last checkpoint (dpo.reference ""),
frozen, sharded like the policy; a fresh AdamW (optimizer_state=reset), a constant lr after a
short warmup. Mixtures default to the bundled sets (bundled_chat_sft, bundled_prefs); set your own
per stage as above. Each stage evaluates on its mixture's held-out split (`eval.every_steps`, and
at its last step): SFT's loss and perplexity, DPO's preference accuracy. Switch the loss with
`--config.stages.dpo.dpo.loss=ipo` (or `robust` with `--config.stages.dpo.dpo.label_smoothing=0.1`).

arg: `model=debug` (the bundled data, minutes on CPU), `model=glm4_9b_chat` or
`model=glm4_9b_0414` (a converted checkpoint via train.init_from; the mesh from the command line).
"""

import os

from glm_jax import config

# name: (base config, seq_len, {stage: (batch, steps, lr, warmup)}). The debug plan's T = 512 holds
# the longest bundled pair (a tool-call prompt twice, 442 tokens); its small batches keep it to
# minutes on a CPU (a 512-token row holds ~4 pairs).
# DPO lrs are ~20x below SFT's: DPO's gradient is that of a few-token log-ratio margin, and a
# large step moves the policy far from the reference in a few updates (the usual 5e-7 at 9B).
PLANS = {
    "debug": ("debug.py", 512, {"sft": (4, 60, 1e-3, 10), "dpo": (2, 200, 5e-5, 10)}),
    "glm4_9b_chat": ("glm4_9b_chat.py", 8192, {"sft": (64, 2000, 1e-5, 100), "dpo": (64, 1000, 5e-7, 50)}),
    "glm4_9b_0414": ("glm4_9b_0414.py", 8192, {"sft": (64, 2000, 1e-5, 100), "dpo": (64, 1000, 5e-7, 50)}),
}
MIXTURES = {"sft": "bundled_chat_sft", "dpo": "bundled_prefs"}
EVAL_EVERY = {"sft": 20, "dpo": 50}  # steps; a stage also evaluates at its last step


def get_config(arg=None):
    args = config.parse_config_arg(arg, {"model": "debug"}, "post_train.py", PLANS)
    base, seq_len, stages = PLANS[args["model"]]
    c = config.load_config_dict(os.path.join(os.path.dirname(__file__), base))
    c.model.max_seq_len = max(c.model.max_seq_len, seq_len)
    c.train.seq_len = seq_len
    c.stage_order = ("sft", "dpo")
    c.stages = {}
    for name, (batch, steps, lr, warmup) in stages.items():
        train = {"objective": "lm" if name == "sft" else "dpo", "batch_size": batch, "steps": steps, "lr": lr,
                 "warmup_steps": warmup}
        # Held-out evaluation of each stage's own mixture (its validation split): SFT by loss and
        # perplexity, DPO by preference accuracy, reward margin and loss (glm_jax/train/evaluate.py).
        stage = {"train": train, "data": {"mixture": MIXTURES[name]}, "eval": {"every_steps": EVAL_EVERY[name]}}
        if name == "dpo":
            train.update(optimizer_state="reset", schedule="constant", weight_decay=0.0)
            stage["dpo"] = {"beta": 0.1, "loss": "sigmoid", "label_smoothing": 0.0, "reference": ""}
        c.stages[name] = stage
    return c
