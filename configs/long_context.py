"""Long-context continued training as stages: raise the RoPE base, then the sequence length.

GLM-4 went 8K -> 128K -> 1M by raising rope_ratio (theta = 10000 x rope_ratio: 500 for 128K,
10000 for 1M) and continuing training on long data. Each stage below starts from the previous
stage's last checkpoint; tokens per step stay constant (batch shrinks as seq_len grows).

    python -m glm_jax.train --config=configs/long_context.py:model=debug --workdir=DIR
    python -m glm_jax.train --config=configs/long_context.py:model=glm4_9b --workdir=gs://... \
        --config.mesh.fsdp=-1 --config.mesh.sequence=4

arg: `model=debug` (512 -> 2K -> 8K) or `model=glm4_9b` (8K -> 32K -> 128K); optional
`,optimizer_state=reset` to drop Adam moments at each stage switch (default keep).

Each stage evaluates at its last step, at its own length: held-out loss (eval.mixture, the
data's validation split). The debug plan also scores passkey and multi-key retrieval
(glm_jax/eval/long_context_tasks.py) at the stage's length and at the next stage's, so the
metrics show each length before and after the stage that extends to it. Those tasks are
tokenized with the bundled tokenizer, the debug model's; the 9B plan evaluates its checkpoints
with its own tokenizer's tasks after training.
"""

import os

from glm_jax import config

# name: (base config, [(stage, seq_len, rope_ratio, batch, steps, lr, mesh overrides)], retrieval eval)
# Both plans raise rope_ratio as GLM-4 does, far faster than the length (50 at 4x, 500 at 16x the
# first stage): with RoPE on half of each head, a base raised only as much as the length (4 at 4x)
# leaves the slow rotary frequencies past the angles the model was trained on
# (benchmarks/long_context.py measures rope_ratio 1, 4 and 50 for the debug model's 512 -> 2K).
# The debug plan fits 8 (simulated) devices: as rows get longer and fewer, devices move from the
# fsdp axis (batch) to the sequence axis (context parallelism). The 9B plan keeps the command
# line's mesh (e.g. --config.mesh.sequence=4).
PLANS = {
    "debug": ("debug.py", [("ctx512", 512, 1.0, 8, 200, 1e-3, {}),
                           ("ctx2k", 2048, 50.0, 2, 100, 3e-4, {"fsdp": 2, "sequence": 4}),
                           ("ctx8k", 8192, 500.0, 1, 50, 1e-4, {"fsdp": 1, "sequence": 8})], True),
    "glm4_9b": ("glm4_9b.py", [("ctx8k", 8192, 1.0, 256, 10000, 1e-4, {}),
                               ("ctx32k", 32768, 50.0, 64, 2000, 3e-5, {}),
                               ("ctx128k", 131072, 500.0, 16, 1000, 1e-5, {})], False),
}


def get_config(arg=None):
    args = config.parse_config_arg(arg, {"model": "debug", "optimizer_state": "keep"}, "long_context.py", PLANS)
    base, stages, retrieval = PLANS[args["model"]]
    c = config.load_config_dict(os.path.join(os.path.dirname(__file__), base))
    c.model.max_seq_len = max(s[1] for s in stages)
    c.stage_order = tuple(s[0] for s in stages)
    c.stages = {name: {"train": {"seq_len": seq, "batch_size": batch, "steps": steps, "lr": lr,
                                 "warmup_steps": min(20, steps // 5), "optimizer_state": args["optimizer_state"]},
                       "model": {"rope_ratio": ratio}, "run": {"remat": "full" if seq > 1024 else "none"},
                       "mesh": mesh, "eval": _eval(stages, i, retrieval)}
                for i, (name, seq, ratio, batch, steps, lr, mesh) in enumerate(stages)}
    return c


def _eval(stages, i: int, retrieval: bool) -> dict:
    """Stage i's evaluation at its last step: held-out loss; with `retrieval`, passkey and multi-key
    at its length and the next stage's (that length before its extension)."""
    lengths = [s[1] for s in stages[i:i + 2]]
    tasks = [f"long_{kind}_{n}" for n in lengths for kind in ("passkey", "multikey")] if retrieval else []
    return {"every_steps": stages[i][4], "batches": 2, "seqio_tasks": ",".join(tasks)}
