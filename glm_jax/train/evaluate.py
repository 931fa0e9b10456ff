"""Held-out evaluation while training (`eval.every_steps`): each task's validation split through
the training objective's own sums, on the training mesh with the training step's shardings.

    heldout = HeldOut(cfg, mesh, local_batches, rows)     # once per stage
    scalars = heldout.evaluate(params)                      # {"eval/<task>/loss": ..., ...}

`local_batches` is {task: [batch, ...]}, each batch this host's rows `rows` of the global batch
(glm_jax.data.loader.heldout_batches: every host packs the same held-out rows, so the numbers do
not depend on the host count). Language modelling reports `loss` (mean cross-entropy per counted
token) and `perplexity` (exp of it) per task; DPO the held-out pairs' `loss`,
`preference_accuracy` and `reward_margin` (glm_jax.train.dpo). Evaluation reads the params and
nothing else: no RNG, no optimizer or data state, so training computes the same with it on or off.
"""

from __future__ import annotations

import math

import jax

from glm_jax import sharding
from glm_jax.config import Config
from glm_jax.train.step import objective_sums


class HeldOut:
    def __init__(self, cfg: Config, mesh, local_batches: dict[str, list[dict]], rows, ref_params: dict | None = None):
        self.cfg = cfg
        B = cfg.train.batch_size
        self.batches = {task: [sharding.global_batch(b, mesh, B, rows) for b in batches]
                        for task, batches in local_batches.items()}
        self._ref = () if ref_params is None else (ref_params,)

        def sums(params, batch, *ref):
            aux = objective_sums(cfg, *ref)(params, batch)[1]
            aux.pop("stats", None)  # MoE routing stats: training's balancing reads them, not evaluation
            return aux

        self._sums = jax.jit(sums)

    def evaluate(self, params: dict) -> dict[str, float]:
        """{"eval/<task>/<metric>": value} over every held-out batch of every task."""
        out = {}
        for task, batches in self.batches.items():
            total = None
            for batch in batches:
                got = self._sums(params, batch, *self._ref)
                total = got if total is None else jax.tree.map(lambda a, b: a + b, total, got)
            out.update({f"eval/{task}/{k}": v for k, v in _means(jax.device_get(total), self.cfg).items()})
        return out


def _means(sums: dict, cfg: Config) -> dict[str, float]:
    if cfg.train.objective == "dpo":
        pairs = max(float(sums["pairs"]), 1.0)
        return {k: float(sums[k]) / pairs for k in ("loss", "preference_accuracy", "reward_margin")}
    loss = float(sums["ce"]) / max(float(sums["weight"]), 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
