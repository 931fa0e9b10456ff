"""The training loop: stages in order, each sharded, checkpointed, resumable.

    run(config_dict, workdir, make_iterator=...)

`make_iterator(cfg, *, process_index, process_count)` returns this host's checkpointable batch
iterator (`__next__`, `get_state()`, `set_state()`; a grain DatasetIterator), yielding dicts of
numpy arrays [train.batch_size // process_count, train.seq_len] (see step.BATCH_FIELDS).

Per stage: Mesh -> Restore or init -> Loop (step, log, checkpoint, preemption check). A stage
resumes from its own latest checkpoint; a new stage starts from the previous stage's last
checkpoint (params; optimizer moments if `train.optimizer_state=keep`) with a fresh data
iterator; the first stage starts from `train.init_from` or random params. A finished stage is
skipped. On SIGTERM (one process) or JAX's multi-host preemption sync point the loop saves and
returns; rerunning the same command resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from glm_jax import config as config_lib, sharding
from glm_jax.config import Config, ConfigError
from glm_jax.train import checkpoint as ckpt_lib
from glm_jax.train import optimizer as opt_lib
from glm_jax.train import state as state_lib
from glm_jax.train.metrics import Metrics
from glm_jax.train.step import BATCH_FIELDS, make_train_step

MakeIterator = Callable[..., Any]
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "kv_groups", "head_dim", "ffn_hidden_size",
                 "qkv_bias", "post_norms")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
    status: str  # "finished" | "preempted"
    step: int  # global step reached
    stage: str


class _Preemption:
    """SIGTERM sets a flag (one process); with several processes JAX's preemption sync point
    decides, so every host stops at the same step."""

    def __init__(self):
        self.flag = threading.Event()
        self._old = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, lambda *_: self.flag.set())
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def reached(self, manager, step: int) -> bool:
        if jax.process_count() > 1:
            return manager.reached_preemption(step)
        return self.flag.is_set()


def _check_batch(local: dict, cfg: Config) -> None:
    rows = cfg.train.batch_size // jax.process_count()
    for name, dtype in BATCH_FIELDS.items():
        if name not in local:
            raise ValueError(f"the data iterator's batch has no field {name!r} (has {sorted(local)}); "
                             f"batches need {sorted(BATCH_FIELDS)}")
        x = np.asarray(local[name])
        if x.shape != (rows, cfg.train.seq_len) or x.dtype != np.dtype(dtype):
            raise ValueError(f"batch field {name!r} is {x.dtype}{list(x.shape)}, expected {dtype}"
                             f"[{rows}, {cfg.train.seq_len}] (train.batch_size / process count, train.seq_len)")


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _start_state(name: str, cfg: Config, mesh, tx, workdir: str, prev: tuple[str, Config] | None,
                 start: int) -> state_lib.TrainState:
    """The state a stage starts from when it has no checkpoint of its own."""
    if prev is not None:
        prev_name, prev_cfg = prev
        prev_ckpts = ckpt_lib.StageCheckpoints(ckpt_lib.stage_dir(workdir, prev_name), read_only=True)
        last = prev_ckpts.latest_step()
        if last != start:
            raise RuntimeError(f"stage {name!r} needs stage {prev_name!r}'s checkpoint at step {start}, "
                               f"found {last}")
        target = state_lib.sharded_abstract_state(cfg, mesh, tx)
        if cfg.train.optimizer_state == "keep":
            try:
                params = prev_ckpts.restore_params(last, target.params)
                rest = prev_ckpts.restore_train(last, {"step": target.step, "opt_state": target.opt_state,
                                                       "rng": target.rng})
                state = state_lib.TrainState(step=rest["step"], params=params, opt_state=rest["opt_state"],
                                             rng=rest["rng"])
            except (ValueError, KeyError) as e:
                raise ConfigError(f"stages.{name}.train.optimizer_state",
                                  f"cannot keep stage {prev_name!r}'s optimizer state ({e}); set it to 'reset'") from e
            _log(f"[{name}] starting from stage {prev_name!r} step {last} (params and optimizer state)")
        else:
            params = prev_ckpts.restore_params(last, target.params)
            state = state_lib.state_from_params(cfg, mesh, tx, params, step=start)
            _log(f"[{name}] starting from stage {prev_name!r} step {last} (params; optimizer reset)")
        prev_ckpts.close()
        return state
    if cfg.train.init_from:
        if not os.path.isdir(os.path.join(cfg.train.init_from, "params")):
            raise ConfigError("train.init_from", f"{cfg.train.init_from!r} is not a params-only checkpoint "
                              f"(expected {cfg.train.init_from}/params, written by checkpoint.save_params)")
        src = ckpt_lib.read_stages(cfg.train.init_from)[-1][1].model
        differ = sorted(f for f in _SHAPE_FIELDS if getattr(src, f) != getattr(cfg.model, f))
        if differ:
            raise ConfigError("train.init_from", f"{cfg.train.init_from} holds a model that differs in "
                              + ", ".join(f"{f} ({getattr(src, f)} there, {getattr(cfg.model, f)} here)" for f in differ))
        params, _ = ckpt_lib.restore_params(cfg.train.init_from, mesh=mesh)
        _log(f"[{name}] starting from params {cfg.train.init_from}")
        return state_lib.state_from_params(cfg, mesh, tx, params, step=0)
    return state_lib.init_state(cfg, mesh, tx)


def train_stage(name: str, cfg: Config, workdir: str, start: int, prev: tuple[str, Config] | None,
                make_iterator: MakeIterator, preemption: _Preemption) -> RunResult:
    end = start + cfg.train.steps
    mesh = sharding.make_mesh(cfg.mesh)  # shapes were checked for every stage by `validate`
    ckpts = ckpt_lib.StageCheckpoints(ckpt_lib.stage_dir(workdir, name), cfg.checkpoint)
    latest = ckpts.latest_step()
    if latest is not None and latest >= end:
        _log(f"[{name}] finished earlier (checkpoint at step {latest}); skipping")
        ckpts.close()
        return RunResult("finished", latest, name)

    tx = opt_lib.make_optimizer(cfg.train)
    iterator = make_iterator(cfg, process_index=jax.process_index(), process_count=jax.process_count())
    with jax.set_mesh(mesh):
        # Restore or init.
        if latest is not None:
            state, data_state = ckpts.restore(latest, state_lib.sharded_abstract_state(cfg, mesh, tx))
            iterator.set_state(data_state)
            _log(f"[{name}] restored checkpoint at step {latest}")
        else:
            state = _start_state(name, cfg, mesh, tx, workdir, prev, start)
        step_fn = make_train_step(cfg, mesh, stage_start=start, tx=tx)
        step = int(jax.device_get(state.step))
        metrics = Metrics(workdir, name, cfg, step, end)
        every = cfg.checkpoint.every_steps
        status, checked = "finished", False
        try:
            # Loop.
            while step < end:
                local = next(iterator)
                if not checked:  # the first batch of each launch
                    _check_batch(local, cfg)
                    checked = True
                batch = sharding.global_batch(local, mesh, cfg.train.batch_size)
                state, m = step_fn(state, batch)
                step += 1
                m = jax.device_get(m)
                if not (math.isfinite(float(m["total_loss"])) and math.isfinite(float(m["grad_norm"]))):
                    ckpts.wait()
                    raise NonFiniteLossError(
                        f"[{name}] non-finite loss ({float(m['loss'])}, gradient norm {float(m['grad_norm'])}) at "
                        f"step {step}; stopping. The last "
                        f"good checkpoint is step {ckpts.latest_step()} in {ckpts.directory}. Lower train.lr, "
                        f"raise train.warmup_steps or set train.grad_clip.")
                metrics.step(step, m)
                if step % every == 0 or step == end:
                    ckpts.save(state, iterator.get_state())
                if step < end and preemption.reached(ckpts.manager, step):
                    if step % every:
                        ckpts.save(state, iterator.get_state())
                    status = "preempted"
                    _log(f"[{name}] preempted at step {step}; checkpoint saved. Rerun the same command to resume.")
                    break
        finally:
            ckpts.wait()
            ckpts.close()
            metrics.close()
    return RunResult(status, step, name)


def validate(stages: list[tuple[str, Config]]) -> None:
    """Checks every stage against the devices (mesh product, divisibility of heads, batch and
    seq_len) before anything is loaded or compiled; errors name the field (`stages.<name>.` first
    when the config has stages)."""
    for name, cfg in stages:
        try:
            sizes = sharding.mesh_shape(cfg.mesh, jax.device_count())
            sharding.validate_for_mesh(cfg, sizes)
            if cfg.train.batch_size % jax.process_count():
                raise ConfigError("train.batch_size", f"{cfg.train.batch_size} rows cannot be split over "
                                  f"{jax.process_count()} processes")
        except ConfigError as e:
            if len(stages) == 1:
                raise
            raise ConfigError(f"stages.{name}.{e.field}", str(e).split(": ", 1)[1]) from None


def _with_checkpoint_tokenizer(cfg: Config) -> Config:
    """A run started from a params-only checkpoint that keeps its weights' tokenizer (from-hf
    does) tokenizes with it, unless the config names one (`data.tokenizer`)."""
    if not cfg.train.init_from or cfg.data.tokenizer:
        return cfg
    from glm_jax.data.tokenizer import checkpoint_tokenizer  # imports TensorFlow: only when needed

    path = checkpoint_tokenizer(cfg.train.init_from)
    return cfg if path is None else dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=path))


def run(cd, workdir: str, make_iterator: MakeIterator) -> RunResult:
    """Runs every stage of a config (ConfigDict or dict with optional stage_order/stages) in
    `workdir`, resuming whatever was done there before."""
    stages = [(name, _with_checkpoint_tokenizer(c)) for name, c in config_lib.resolve_stages(cd)]
    workdir = os.path.abspath(workdir)
    ckpt_lib.write_stages(workdir, stages)
    validate(stages)
    start, prev, result = 0, None, None
    with _Preemption() as preemption:
        for name, cfg in stages:
            t0 = time.perf_counter()
            result = train_stage(name, cfg, workdir, start, prev, make_iterator, preemption)
            if result.status == "preempted":
                return result
            _log(f"[{name}] done at step {result.step} ({time.perf_counter() - t0:.1f} s)")
            start, prev = start + cfg.train.steps, (name, cfg)
    return result
