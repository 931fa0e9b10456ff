"""Training metrics: clu writers (TensorBoard + console), a per-step JSONL log, MFU and ETA.

FLOPs per token (`train_flops_per_token`) count matmuls only: 6 x (params touched by matmuls,
i.e. all but the embedding table) for forward + backward, plus causal attention's
QK^T and PV: 6 x L x H x E x T (12 x ... halved by the causal mask). Remat recompute is not
counted (MFU, not hardware utilisation).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
from clu import metric_writers

from glm_jax.config import Config, ModelConfig
from glm_jax.model import spec

# Peak dense bf16 TFLOP/s per chip, by jax `device_kind`.
PEAK_TFLOPS = {"TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0,
               "TPU v6 lite": 918.0, "TPU v6e": 918.0, "TPU7x": 2307.0}


def train_flops_per_token(m: ModelConfig, seq_len: int) -> float:
    matmul_params = spec.param_count(m) - m.vocab_size * m.hidden_size
    attention = 6.0 * m.num_layers * m.num_heads * m.head_dim * seq_len
    return 6.0 * matmul_params + attention


def peak_flops_per_device(cfg: Config, device_kind: str) -> float | None:
    """FLOP/s of one device: `train.peak_tflops`, else the table above, else None (MFU not shown)."""
    if cfg.train.peak_tflops:
        return cfg.train.peak_tflops * 1e12
    tflops = PEAK_TFLOPS.get(device_kind)
    return tflops * 1e12 if tflops else None


class Metrics:
    """Writes every step to WORKDIR/metrics.jsonl and, every `train.log_every` steps, scalars to
    TensorBoard/console and a progress line with ETA. Only process 0 writes files."""

    def __init__(self, workdir: str, stage: str, cfg: Config, first_step: int, end_step: int):
        self.primary = jax.process_index() == 0
        self.stage, self.cfg, self.end = stage, cfg, end_step
        self.writer = metric_writers.create_default_writer(
            os.path.join(workdir, "tb"), just_logging=not self.primary, asynchronous=True)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.primary else None
        self.tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
        self.flops_per_step = train_flops_per_token(cfg.model, cfg.train.seq_len) * self.tokens_per_step
        self.peak = peak_flops_per_device(cfg, jax.devices()[0].device_kind)
        self.num_devices = jax.device_count()
        self._last = time.perf_counter()
        self._window_start, self._window_steps, self._window_time = None, 0, 0.0
        self._first = first_step

    def step(self, step: int, m: dict) -> None:
        """Records step `step` (1-based update count) with host metrics `m`."""
        now = time.perf_counter()
        dt, self._last = now - self._last, now
        if step > self._first + 1:  # the first step after a (re)start includes compilation
            self._window_steps += 1
            self._window_time += dt
        row = {"stage": self.stage, "step": step, "step_time": dt, **{k: float(v) for k, v in m.items()}}
        if self.jsonl:
            self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
        if step % self.cfg.train.log_every and step != self.end:
            return
        scalars = {k: float(v) for k, v in m.items()}
        scalars["step_time"] = dt
        line = f"[{self.stage}] step {step}/{self.end}  loss {scalars['loss']:.4f}  grad_norm " \
               f"{scalars['grad_norm']:.3f}  lr {scalars['lr']:.3g}"
        if self._window_steps:
            sec = self._window_time / self._window_steps
            scalars["tokens_per_sec"] = self.tokens_per_step / sec
            scalars["step_time"] = sec
            line += f"  {scalars['tokens_per_sec']:,.0f} tok/s  {sec * 1e3:.0f} ms/step"
            if self.peak:
                scalars["mfu"] = self.flops_per_step / sec / (self.peak * self.num_devices)
                line += f"  MFU {100 * scalars['mfu']:.1f}%"
            eta = (self.end - step) * sec
            line += f"  ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
            self._window_steps, self._window_time = 0, 0.0
        self.writer.write_scalars(step, {k: v for k, v in scalars.items() if math.isfinite(v)})
        if self.primary:
            print(line, flush=True)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
        if self.jsonl:
            self.jsonl.close()
