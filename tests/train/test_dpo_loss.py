"""Must-show 1: our DPO loss and rewards equal TRL's (trl.DPOTrainer's loss computation, run with
torch) on the same per-sequence log-probs, to 1e-6, for sigmoid, IPO and label-smoothed (robust) DPO.

TRL computes the loss inside `DPOTrainer._compute_loss(model, inputs)` from the per-token log-probs
the model returns; the harness below hands it per-token log-probs whose sums over each completion
are the sequence log-probs we give our `dpo_losses`, and precomputed reference log-probs (TRL's
`precompute_ref_log_probs` path), so both sides see exactly the same numbers. `_compute_loss` is TRL's
private API: setup.py pins trl to 1.16.x."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.config import DPOConfig
from glm_jax.train import dpo

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")


class _PerTokenLogps(torch.nn.Module):
    """Returns the given per-token log-probs [2N, T-1] (chosen rows, then rejected) as TRL's fused head would."""

    def __init__(self, per_token):
        super().__init__()
        self.per_token = per_token

    def forward(self, input_ids=None, **_):
        z = torch.zeros_like(self.per_token)
        return types.SimpleNamespace(log_probs=self.per_token, entropy=z, mean_logits=z,
                                     is_top1=torch.zeros_like(self.per_token, dtype=torch.bool))


def _trl(beta, loss_type, label_smoothing, per_token, completion_mask, ref_c, ref_r):
    from accelerate import Accelerator

    trainer = object.__new__(trl.DPOTrainer)
    model = _PerTokenLogps(per_token).eval()  # eval mode: TRL logs under "eval" and skips token counting
    trainer.__dict__.update(
        beta=beta, loss_types=[loss_type], loss_weights=[1.0], label_smoothing=label_smoothing, ld_alpha=None,
        f_divergence_type="reverse_kl", use_weighting=False, _total_train_tokens=0, aux_loss_enabled=False, precompute_ref_logps=True,
        accelerator=Accelerator(cpu=True), model=model, _metrics={"train": collections.defaultdict(list),
                                                                  "eval": collections.defaultdict(list)})
    inputs = {"input_ids": torch.zeros(completion_mask.shape, dtype=torch.long), "completion_mask": completion_mask,
              "attention_mask": torch.ones_like(completion_mask), "ref_chosen_logps": ref_c,
              "ref_rejected_logps": ref_r}
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    m = trainer._metrics["eval"]
    return float(loss), {k: m[f"rewards/{k}"][0] for k in ("chosen", "rejected", "accuracies", "margins")}


@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("robust", 0.1),
                                                        ("robust", 0.3)])
def test_dpo_loss_and_rewards_equal_trl(loss_type, label_smoothing):
    rng = np.random.default_rng(0)
    n, t, beta = 16, 24, 0.2
    lengths = rng.integers(3, t - 4, size=2 * n)  # completion tokens of each sequence (chosen rows, then rejected)
    mask = np.zeros((2 * n, t), np.int64)
    for i, length in enumerate(lengths):
        mask[i, t - length:] = 1  # prompt first, then the completion
    per_token = rng.uniform(-6.0, -0.05, size=(2 * n, t - 1)) * mask[:, 1:]
    seq = per_token.sum(axis=1)  # what TRL sums; the same sequence log-probs go to ours
    ref = seq + rng.normal(0.0, 3.0, size=2 * n)
    want_loss, want = _trl(beta, loss_type, label_smoothing, torch.tensor(per_token, dtype=torch.float64),
                           torch.tensor(mask), torch.tensor(ref[:n]), torch.tensor(ref[n:]))

    with jax.enable_x64(True):
        f = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
        cfg = DPOConfig(beta=beta, loss=loss_type, label_smoothing=label_smoothing)
        losses, rc, rr = dpo.dpo_losses(f(seq[:n]), f(seq[n:]), f(ref[:n]), f(ref[n:]), cfg,
                                        f(lengths[:n]), f(lengths[n:]))
        sums = dpo.pair_metric_sums(losses, rc, rr, jnp.ones(n, bool))
        got = {k: float(v) / n for k, v in sums.items()}
    assert got["loss"] == pytest.approx(want_loss, abs=1e-6, rel=1e-6)
    assert got["rewards_chosen"] == pytest.approx(want["chosen"], abs=1e-6)
    assert got["rewards_rejected"] == pytest.approx(want["rejected"], abs=1e-6)
    assert got["reward_margin"] == pytest.approx(want["margins"], abs=1e-6)
    assert got["preference_accuracy"] == pytest.approx(want["accuracies"], abs=1e-6)
    assert 0.0 < got["preference_accuracy"] < 1.0  # a mix of right and wrong pairs: the comparison is exercised


def test_dpo_loss_in_float32_matches_float64_to_1e_6():
    """What training computes (fp32) stays within 1e-6 of the exact loss at log-prob magnitudes of real responses."""
    rng = np.random.default_rng(1)
    pc, pr = rng.uniform(-80, -5, 64), rng.uniform(-80, -5, 64)
    rc, rr = pc + rng.normal(0, 1, 64), pr + rng.normal(0, 1, 64)
    cfg = DPOConfig(beta=0.1)
    got = np.asarray(dpo.dpo_losses(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)), cfg)[0])
    with jax.enable_x64(True):
        want = np.asarray(dpo.dpo_losses(*(jnp.asarray(x, jnp.float64) for x in (pc, pr, rc, rr)), cfg)[0])
    np.testing.assert_allclose(got, want, atol=1e-6)
