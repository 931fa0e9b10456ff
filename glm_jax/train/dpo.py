"""Direct preference optimization on packed preference pairs, against a frozen reference policy.

Batch layout (glm_jax/data/loader.py, preference.py): rows are the usual [B, T] fields; the k-th
pair of a row is segment 2k-1 (prompt + chosen) and segment 2k (prompt + rejected), and
`loss_mask` is 1 only where a target is a response token. A pair never spans two rows.

    sequence_logprobs(params, batch, cfg)      -> [B, T + 1]  sum of log p(target) per segment id
    split_pairs(x)                             -> chosen [B, P], rejected [B, P] of any [B, T + 1]
    dpo_losses(pc, pr, rc, rr, dpo_cfg, ...)   -> per-pair loss, chosen and rejected rewards
    loss_sums(params, batch, cfg, ref_params)  -> the step's summed loss and metrics (step.py)

Letters: B rows, T positions, S = T + 1 segment ids (0 = padding), P = T // 2 pair slots per row.

The reference policy is a second params tree, sharded like the policy by the same rule table and
never updated: the train step takes it as an argument it neither differentiates nor donates.
Frozen reference vs reference log-probs computed in a first pass and stored with the data
(benchmarks/post_train.py, debug model, the same 2 x 512 tokens): an SFT step 1.00, the DPO step
1.38, the reference forward alone 0.32. Precomputing pays that 0.32 once per pair instead of once
per epoch: the same cost for one epoch, 15% less per step at 3 epochs; it also frees the
reference's memory (a third of the train state: fp32 params next to params + two Adam moments).
We keep the frozen reference: it is exact for any packing, shuffling and mixture (stored log-probs
would be keyed to examples and go stale when the reference or tokenizer changes), it needs no
extra pass or artifact before DPO can start, and a resumed stage just reads it again from its
checkpoint. Typical DPO runs are 1-3 epochs, where the saving is at most ~15%.

Rewards (TRL's definitions): r = beta x (log pi(response) - log ref(response)); accuracy is the
fraction of pairs with r(chosen) > r(rejected) (so 0 at the start, where pi = ref and every
reward is 0); margin r(chosen) - r(rejected). IPO compares per-token averages of the log-ratios
(TRL, the IPO authors' reference form).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm_jax.config import Config, DPOConfig
from glm_jax.model import hidden_states, output_logits
from glm_jax.train import loss as loss_lib

METRICS = ("loss", "rewards_chosen", "rewards_rejected", "reward_margin", "preference_accuracy")


def segment_sums(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """values [B, T], segment_ids [B, T] int in [0, T] -> [B, T + 1]: per row, the sum over each segment id."""
    B, T = segment_ids.shape
    ids = (jnp.arange(B, dtype=jnp.int32)[:, None] * (T + 1) + segment_ids.astype(jnp.int32)).reshape(-1)
    return jax.ops.segment_sum(values.reshape(-1), ids, num_segments=B * (T + 1)).reshape(B, T + 1)


def sequence_logprobs(params: dict, batch: dict, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """(sum of log p(target) under loss_mask, counted targets), each [B, T + 1] fp32 by segment id."""
    x = hidden_states(params, batch["tokens"], cfg.model, cfg.run, batch["positions"], batch["segment_ids"])
    logp = loss_lib.tiled_token_logprobs(output_logits, x, params["output"]["kernel"], batch["targets"],
                                         cfg.train.loss_chunk)
    mask = batch["loss_mask"].astype(jnp.float32)
    seg = batch["segment_ids"]
    return segment_sums(logp * mask, seg), segment_sums(mask, seg)


def split_pairs(by_segment: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, T + 1] (by segment id) -> chosen [B, P], rejected [B, P]: pair k (1-based) is segments 2k-1, 2k."""
    P = (by_segment.shape[1] - 1) // 2
    return by_segment[:, 1:2 * P:2], by_segment[:, 2:2 * P + 1:2]


def dpo_losses(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
               ref_rejected: jax.Array, dpo: DPOConfig, chosen_tokens: jax.Array | None = None,
               rejected_tokens: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-pair (loss, chosen reward, rejected reward), all the inputs' shape, fp32 (config.DPOConfig).

    Log-probs are sums over each response's tokens; IPO divides each log-ratio by its response's
    token count (`chosen_tokens`, `rejected_tokens`, at least 1), as TRL does. Rewards are always
    beta x the summed log-ratios."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if dpo.loss == "sigmoid":
        losses = -jax.nn.log_sigmoid(dpo.beta * h)
    elif dpo.loss == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("dpo.loss=ipo averages the log-ratios per token: pass chosen_tokens and rejected_tokens")
        h = chosen_ratio / jnp.maximum(chosen_tokens, 1.0) - rejected_ratio / jnp.maximum(rejected_tokens, 1.0)
        losses = jnp.square(h - 1.0 / (2.0 * dpo.beta))
    elif dpo.loss == "robust":
        e = dpo.label_smoothing
        losses = (-(1.0 - e) * jax.nn.log_sigmoid(dpo.beta * h) + e * jax.nn.log_sigmoid(-dpo.beta * h)) / (1.0 - 2.0 * e)
    else:
        raise ValueError(f"config field `dpo.loss`: unknown {dpo.loss!r}")
    return losses, dpo.beta * chosen_ratio, dpo.beta * rejected_ratio


def pair_metric_sums(losses, chosen_rewards, rejected_rewards, valid) -> dict:
    """Sums over the valid pairs (divide by `pairs` for means): loss, rewards, margin, accuracy."""
    w = valid.astype(jnp.float32)
    return {"loss": jnp.sum(losses * w), "rewards_chosen": jnp.sum(chosen_rewards * w),
            "rewards_rejected": jnp.sum(rejected_rewards * w),
            "reward_margin": jnp.sum((chosen_rewards - rejected_rewards) * w),
            "preference_accuracy": jnp.sum((chosen_rewards > rejected_rewards) * w), "pairs": jnp.sum(w)}


def reference_logprobs(ref_params: dict, batch: dict, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """The frozen reference's per-segment log-prob sums and counts (no gradient flows into them)."""
    seq, counts = sequence_logprobs(jax.lax.stop_gradient(ref_params), batch, cfg)
    return jax.lax.stop_gradient(seq), counts


def _pair_sums(seq: jax.Array, ref_seq: jax.Array, counts: jax.Array, dpo: DPOConfig) -> dict:
    pc, pr = split_pairs(seq)
    rc, rr = split_pairs(ref_seq)
    nc, nr = split_pairs(counts)
    valid = (nc > 0) & (nr > 0)  # both responses have a counted token (empty slots are not pairs)
    out = pair_metric_sums(*dpo_losses(pc, pr, rc, rr, dpo, nc, nr), valid)
    # Does the policy alone give the chosen response the higher mean token log-prob?
    out["policy_accuracy"] = jnp.sum((pc / jnp.maximum(nc, 1.0) > pr / jnp.maximum(nr, 1.0)) * valid)
    return out


def loss_sums(params: dict, batch: dict, cfg: Config, ref_params: dict) -> tuple[jax.Array, dict]:
    """(summed DPO loss to differentiate, {metric sums, "weight": pairs}) of one (micro-)batch."""
    ref_seq, counts = reference_logprobs(ref_params, batch, cfg)
    seq, _ = sequence_logprobs(params, batch, cfg)
    sums = _pair_sums(seq, ref_seq, counts, cfg.dpo)
    return sums["loss"], {**sums, "weight": sums["pairs"]}


def evaluate(params: dict, ref_params: dict, rows: dict, cfg: Config, batch_rows: int = 8) -> dict:
    """Mean pair metrics (METRICS, `policy_accuracy`: the fraction of pairs whose chosen response
    has the higher mean token log-prob under the policy alone) and the number of `pairs`, over
    preference rows, e.g. `loader.epoch_rows` of a held-out task."""

    @jax.jit
    def sums(p, ref, b):
        seq, counts = sequence_logprobs(p, b, cfg)
        ref_seq, _ = sequence_logprobs(ref, b, cfg)
        return _pair_sums(seq, ref_seq, counts, cfg.dpo)

    n = len(rows["tokens"])
    total: dict = {}
    for start in range(0, n, batch_rows):
        b = {k: v[start:start + batch_rows] for k, v in rows.items()}
        got = jax.device_get(sums(params, ref_params, b))
        total = {k: total.get(k, 0.0) + float(v) for k, v in got.items()}
    pairs = max(total["pairs"], 1.0)
    return {**{k: v / pairs for k, v in total.items() if k != "pairs"}, "pairs": total["pairs"]}
