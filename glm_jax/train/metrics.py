"""Training metrics: per-step JSONL rows, TensorBoard scalars, a progress line with MFU/ETA.

The loop hands each step's metrics over as device arrays (`record`); nothing is fetched until
`flush` (a log step, a checkpoint, the end), so the host never waits on the device between
them and the next batch is prepared while the step runs. `flush` fetches the whole window in
one transfer, writes a row per step and returns the rows, so the caller can act on them (the
non-finite check) before saving anything. Step times are the window's wall time over its steps.

Where it goes (process 0 only; WORKDIR local or gs://, see glm_jax.storage):
    WORKDIR/metrics/<first step, 9 digits>-<launch id>.jsonl   a row per step, in chunks of
        CHUNK_ROWS rows rewritten whole at each flush (GCS objects cannot be appended to);
        `read_rows(workdir)` reads them back, a step repeated after a restart keeping its last row
    WORKDIR/tb/   TensorBoard events (glm_jax.train.tensorboard), written into a local directory
        that is uploaded to WORKDIR/tb after each flush when WORKDIR is a URL (an event file
        cannot be appended to on GCS either).

FLOPs per token (`train_flops_per_token`) count matmuls only: 6 x (params touched by matmuls,
i.e. all but the embedding table) for forward + backward, plus causal attention's
QK^T and PV: 6 x L x H x E x T (12 x ... halved by the causal mask). Remat recompute is not
counted (MFU, not hardware utilisation). A DPO step adds the reference policy's forward pass:
4/3 of that per token.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import jax

from glm_jax import accelerators, storage
from glm_jax.config import Config, ModelConfig
from glm_jax.model import spec
from glm_jax.train.tensorboard import ScalarWriter

CHUNK_ROWS = 1000


def train_flops_per_token(m: ModelConfig, seq_len: int) -> float:
    """6 x the matmul parameters one token uses (a MoE model's active ones: k of its routed
    experts; the MTP module and its head when present, which training runs) + attention."""
    matmul_params = spec.active_param_count(m, mtp=True) - m.vocab_size * m.hidden_size * (1 + m.mtp_layers)
    attention = 6.0 * (m.num_layers + m.mtp_layers) * m.num_heads * m.head_dim * seq_len
    return 6.0 * matmul_params + attention


def peak_flops_per_device(cfg: Config, device_kind: str) -> float | None:
    """FLOP/s of one device: `train.peak_tflops`, else glm_jax.accelerators', else None (MFU not shown)."""
    if cfg.train.peak_tflops:
        return cfg.train.peak_tflops * 1e12
    chip = accelerators.lookup(device_kind)
    return chip.peak_flops_per_device if chip else None


def read_rows(workdir: str) -> list[dict]:
    """Every metrics row of a workdir in step order; a step written again after a restart (a run
    killed after its last checkpoint) keeps the row of the later launch."""
    d = storage.join(storage.resolve(workdir), "metrics")
    by_step = {}
    for name in storage.listdir(d):  # sorted: first step, then launch id
        if name.endswith(".jsonl"):
            for line in storage.read_text(storage.join(d, name)).splitlines():
                row = json.loads(line)
                by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


class _Chunks:
    """Rows appended to WORKDIR/metrics/ as whole-object chunks of at most CHUNK_ROWS."""

    def __init__(self, workdir: str):
        self.dir = storage.join(workdir, "metrics")
        self.launch = f"{int(time.time() * 1000):013d}"
        self.rows: list[str] = []
        self.first = None

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if len(self.rows) == CHUNK_ROWS:
                self.rows, self.first = [], None
            if self.first is None:
                self.first = row["step"]
            self.rows.append(json.dumps(row))
        if self.rows:
            storage.write_text(storage.join(self.dir, f"{self.first:09d}-{self.launch}.jsonl"),
                               "\n".join(self.rows) + "\n")


def _held_out(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.startswith("eval/")}


class Metrics:
    """Rows for every step, and every `train.log_every` steps TensorBoard scalars and a progress
    line with ETA. Only process 0 writes anything."""

    def __init__(self, workdir: str, stage: str, cfg: Config, first_step: int, end_step: int):
        self.primary = jax.process_index() == 0
        self.stage, self.cfg, self.end = stage, cfg, end_step
        self.tb_dir = storage.join(workdir, "tb")
        self._local_tb = tempfile.mkdtemp(prefix="glm_jax_tb-") if storage.is_url(workdir) else None
        self.writer = ScalarWriter(self._local_tb or self.tb_dir) if self.primary else None
        self.chunks = _Chunks(workdir) if self.primary else None
        self.tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
        self.flops_per_step = train_flops_per_token(cfg.model, cfg.train.seq_len) * self.tokens_per_step
        if cfg.train.objective == "dpo":  # + the reference's forward (a third of forward + backward)
            self.flops_per_step *= 4.0 / 3.0
        self.peak = peak_flops_per_device(cfg, jax.devices()[0].device_kind)
        self.num_devices = jax.device_count()
        self._pending: list[tuple[int, dict]] = []
        self._last = time.perf_counter()
        self._first = first_step
        self._timed_steps, self._timed = 0, 0.0  # steps and seconds since the last progress line

    def record(self, step: int, m: dict) -> None:
        """Keeps step `step`'s metrics (device arrays, not fetched)."""
        self._pending.append((step, m))

    def record_eval(self, step: int, scalars: dict[str, float]) -> None:
        """Adds held-out scalars (`eval/<task>/<metric>`) to step `step`'s row, which is then logged."""
        for i, (s, m) in enumerate(self._pending):
            if s == step:
                self._pending[i] = (s, {**m, **scalars})
                return
        raise ValueError(f"step {step} has no pending metrics to add held-out results to")

    def flush(self) -> list[dict]:
        """Fetches the pending steps' metrics (one transfer), writes their rows, and on a log step
        the scalars and progress line; returns the rows (host floats)."""
        if not self._pending:
            return []
        values = jax.device_get([m for _, m in self._pending])
        now = time.perf_counter()
        steps = [s for s, _ in self._pending]
        # The first step after a (re)start includes compilation: it is timed but not averaged in.
        timed = [s for s in steps if s > self._first + 1]
        dt = (now - self._last) / len(steps)
        self._last = now
        if timed:
            self._timed_steps += len(timed)
            self._timed += dt * len(timed)
        rows = [{"stage": self.stage, "step": s, "step_time": dt, **{k: float(v) for k, v in m.items()}}
                for s, m in zip(steps, values)]
        self._pending = []
        if self.chunks:
            self.chunks.write(rows)
        last = rows[-1]
        if last["step"] % self.cfg.train.log_every == 0 or last["step"] == self.end or _held_out(last):
            self._log(last)
        return rows

    def _log(self, row: dict) -> None:
        scalars = {k: v for k, v in row.items() if k not in ("stage", "step")}
        line = f"[{self.stage}] step {row['step']}/{self.end}  loss {row['loss']:.4f}  grad_norm " \
               f"{row['grad_norm']:.3f}  lr {row['lr']:.3g}"
        if "mtp_loss" in row:  # the MTP module's own loss, apart from the main one
            line += f"  mtp_loss {row['mtp_loss']:.4f}  load max/mean {row['moe_load_imbalance']:.2f}"
        if "preference_accuracy" in row:  # DPO
            line += f"  acc {row['preference_accuracy']:.2f}  margin {row['reward_margin']:.3f}"
        held_out = {k.split("/")[1]: v for k, v in _held_out(row).items() if k.endswith("/loss")}
        if held_out:  # every eval/<task>/<metric> goes to the metrics rows and TensorBoard; the line shows losses
            line += "  held-out loss " + " ".join(f"{task} {v:.4f}" for task, v in held_out.items())
        if self._timed_steps:
            sec = self._timed / self._timed_steps
            scalars["tokens_per_sec"] = self.tokens_per_step / sec
            scalars["step_time"] = sec
            line += f"  {scalars['tokens_per_sec']:,.0f} tok/s  {sec * 1e3:.0f} ms/step"
            if self.peak:
                scalars["mfu"] = self.flops_per_step / sec / (self.peak * self.num_devices)
                line += f"  MFU {100 * scalars['mfu']:.1f}%"
            eta = (self.end - row["step"]) * sec
            line += f"  ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
            self._timed_steps, self._timed = 0, 0.0
        if self.primary:
            self.writer.write_scalars(row["step"], {k: v for k, v in scalars.items() if math.isfinite(v)})
            print(line, flush=True)
            self._upload_tb()

    def _upload_tb(self) -> None:
        if not self._local_tb:
            return
        self.writer.flush()
        for root, _, files in os.walk(self._local_tb):
            for name in files:
                local = os.path.join(root, name)
                storage.upload(local, storage.join(self.tb_dir, os.path.relpath(local, self._local_tb)))

    def close(self) -> None:
        self.flush()
        if self.primary:
            self.writer.flush()
            self._upload_tb()
            self.writer.close()
