"""The training loop: stages in order, each sharded, checkpointed, resumable, on any host count.

    run(config_dict, workdir, make_iterator=..., prepare_data=...)

`workdir` is a local path or a gs:// URL (glm_jax.storage). `make_iterator(cfg, *, rows)` returns
a checkpointable iterator over the global batch rows `rows` (the rows this process's devices
hold, `sharding.host_rows`): `__next__` gives dicts of numpy arrays [len(rows), train.seq_len]
(see step.BATCH_FIELDS), `get_state()` {str(row): state}, `set_state(states)` takes its rows
from a dict holding at least those. Row r's stream must not depend on the process count, so
a checkpoint written by N processes resumes on M with exactly the next examples.
`prepare_data(cfg)`, if given, runs on process 0 alone before every other process starts
reading (a barrier), e.g. to tokenize the data cache once into shared storage.
`heldout_batches(cfg, *, rows)` gives a stage with `eval.every_steps` its held-out batches
({task: [batch of `rows`, ...]}, glm_jax.data.loader.heldout_batches), evaluated every
`eval.every_steps` steps and at the stage's last step (glm_jax.train.evaluate);
`seqio_evaluation(cfg)` gives a stage with `eval.seqio_tasks` the object whose
`evaluate(params, model_cfg, run, mesh)` computes those tasks' metric_fns at the same steps
(glm_jax.eval.seqio_eval). The results join that step's metrics row.

Per stage: Mesh -> Restore or init -> Loop (step, metrics, checkpoint, preemption check). A stage
resumes from its own latest checkpoint; a new stage starts from the previous stage's last
checkpoint (params; optimizer moments if `train.optimizer_state=keep`) with a fresh data
iterator; the first stage starts from `train.init_from` or random params. A finished stage is
skipped. A DPO stage (`train.objective=dpo`) also loads its frozen reference policy, sharded like
the params: `dpo.reference` if set, else the params the stage starts from (the previous stage's
last checkpoint, or `train.init_from`); it is read from there again on resume, never saved, never
updated. The host does not wait on the device between log or checkpoint steps: metrics stay on
device until then, and a non-finite loss or gradient norm is caught there, before any save,
naming the first bad step. On SIGTERM (one process) or JAX's multi-host preemption sync point
(SIGTERM to any process) every process saves the same step and returns; rerunning the same
command resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from glm_jax import config as config_lib, sharding, storage
from glm_jax.config import Config, ConfigError
from glm_jax.train import checkpoint as ckpt_lib
from glm_jax.train import evaluate as evaluate_lib
from glm_jax.train import optimizer as opt_lib
from glm_jax.train import state as state_lib
from glm_jax.train import validation
from glm_jax.train.metrics import Metrics
from glm_jax.train.step import BATCH_FIELDS, make_train_step

MakeIterator = Callable[..., Any]


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


def _check_batch(local: dict, cfg: Config, rows: int) -> None:
    for name, dtype in BATCH_FIELDS.items():
        if name not in local:
            raise ValueError(f"the data iterator's batch has no field {name!r} (has {sorted(local)}); "
                             f"batches need {sorted(BATCH_FIELDS)}")
        x = np.asarray(local[name])
        if x.shape != (rows, cfg.train.seq_len) or x.dtype != np.dtype(dtype):
            raise ValueError(f"batch field {name!r} is {x.dtype}{list(x.shape)}, expected {dtype}"
                             f"[{rows}, {cfg.train.seq_len}] (the rows this process reads, train.seq_len)")


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
    if cfg.train.init_from:  # checked by validation.check_init_from
        params, _ = ckpt_lib.restore_params(cfg.train.init_from, mesh=mesh)
        _log(f"[{name}] starting from params {cfg.train.init_from}")
        return state_lib.state_from_params(cfg, mesh, tx, params, step=0)
    return state_lib.init_state(cfg, mesh, tx)


def _reference(name: str, cfg: Config, mesh, workdir: str, prev: tuple[str, Config] | None, start: int) -> dict:
    """The frozen DPO reference params of a stage, sharded like the policy (see the module docstring)."""
    path, step = ckpt_lib.reference_checkpoint(cfg, workdir, prev[0] if prev else None)
    if step is not None and step != start:
        raise RuntimeError(f"stage {name!r} takes its DPO reference from stage {prev[0]!r}'s checkpoint at step "
                           f"{start}, found {step}")
    params, _ = ckpt_lib.restore_params(path, step, mesh=mesh)
    _log(f"[{name}] DPO reference: " + (f"params {path}" if step is None else f"stage {prev[0]!r} step {start}"))
    return params


def _first_bad(rows: list[dict]) -> dict | None:
    return next((r for r in rows if not (math.isfinite(r["total_loss"]) and math.isfinite(r["grad_norm"]))), None)


def train_stage(name: str, cfg: Config, workdir: str, start: int, prev: tuple[str, Config] | None,
                make_iterator: MakeIterator, preemption: _Preemption,
                heldout_batches: MakeIterator | None = None,
                seqio_evaluation: Callable[[Config], Any] | None = None) -> RunResult:
    end = start + cfg.train.steps
    mesh = sharding.make_mesh(cfg.mesh)  # shapes were checked for every stage by validation.check_run
    ckpts = ckpt_lib.StageCheckpoints(ckpt_lib.stage_dir(workdir, name), cfg.checkpoint)
    latest = ckpts.latest_step()
    if latest is not None and latest >= end:
        _log(f"[{name}] finished earlier (checkpoint at step {latest}); skipping")
        ckpts.close()
        return RunResult("finished", latest, name)

    tx = opt_lib.make_optimizer(cfg.train)
    B = cfg.train.batch_size
    rows, owned = sharding.host_rows(mesh, B, cfg.train.seq_len)
    iterator = make_iterator(cfg, rows=rows)
    with jax.set_mesh(mesh):
        # Restore or init.
        if latest is not None:
            state, data_state = ckpts.restore(latest, state_lib.sharded_abstract_state(cfg, mesh, tx))
            iterator.set_state(data_state)
            _log(f"[{name}] restored checkpoint at step {latest}")
        else:
            state = _start_state(name, cfg, mesh, tx, workdir, prev, start)
        step_fn = make_train_step(cfg, mesh, stage_start=start, tx=tx)
        extra = (_reference(name, cfg, mesh, workdir, prev, start),) if cfg.train.objective == "dpo" else ()
        heldout = None
        if cfg.eval.every_steps:
            if heldout_batches is None:
                raise ValueError("eval.every_steps is set but the loop was given no heldout_batches")
            heldout = evaluate_lib.HeldOut(cfg, mesh, heldout_batches(cfg, rows=rows), rows, *extra)
        seqio_eval = None
        if cfg.eval.every_steps and cfg.eval.seqio_tasks:
            if seqio_evaluation is None:
                raise ValueError("eval.seqio_tasks is set but the loop was given no seqio_evaluation")
            seqio_eval = seqio_evaluation(cfg)
        step = int(jax.device_get(state.step))
        metrics = Metrics(workdir, name, cfg, step, end)
        every, log_every = cfg.checkpoint.every_steps, cfg.train.log_every
        status, checked, first = "finished", False, step
        try:
            # Loop. Nothing here waits on the device except a flush (log/checkpoint/last step).
            while step < end:
                local = next(iterator)
                if not checked:  # the first batch of each launch
                    _check_batch(local, cfg, len(rows))
                    checked = True
                batch = sharding.global_batch(local, mesh, B, rows)
                state, m = step_fn(state, batch, *extra)
                step += 1
                metrics.record(step, m)
                evaluated = heldout is not None and (step % cfg.eval.every_steps == 0 or step == end)
                if evaluated:  # before the preemption check: a SIGTERM during it saves this step
                    _log(f"[{name}] evaluating held-out data at step {step}")
                    scalars = heldout.evaluate(state.params)
                    if seqio_eval is not None:
                        scalars.update(seqio_eval.evaluate(state.params, cfg.model, cfg.run, mesh))
                    metrics.record_eval(step, scalars)
                preempted = step < end and preemption.reached(ckpts.manager, step)
                save = step % every == 0 or step == end or preempted
                # The launch's first step is flushed alone: its time is the compile, not a step.
                if save or evaluated or step % log_every == 0 or step == first + 1:
                    bad = _first_bad(metrics.flush())
                    if bad is not None:
                        ckpts.wait()
                        raise NonFiniteLossError(
                            f"[{name}] non-finite loss ({bad['loss']}, gradient norm {bad['grad_norm']}) at step "
                            f"{bad['step']}; stopping. The last good checkpoint is step {ckpts.latest_step()} in "
                            f"{ckpts.directory}. Lower train.lr, raise train.warmup_steps or set train.grad_clip.")
                if save:
                    ckpts.save(state, iterator.get_state(), owned)
                if preempted:
                    status = "preempted"
                    _log(f"[{name}] preempted at step {step}; checkpoint saved. Rerun the same command to resume.")
                    break
        finally:
            ckpts.wait()
            ckpts.close()
            metrics.close()
    return RunResult(status, step, name)


def validate(stages: list[tuple[str, Config]]) -> None:
    """validation.check_stages on this job's devices and processes (no workdir needed)."""
    validation.check_stages(stages, num_devices=jax.device_count(), num_processes=jax.process_count())


def _prepare(stages: list[tuple[str, Config]], prepare_data: Callable[[Config], Any] | None) -> None:
    """prepare_data on process 0 for every stage, then a barrier: the others read what it built."""
    if prepare_data is None:
        return
    if jax.process_index() == 0:
        for _, cfg in stages:
            prepare_data(cfg)
    if jax.process_count() > 1:
        # The coordination service's barrier, not a collective: on CPU a collective gives up when a
        # peer is 30 s late (Gloo's rendezvous), and tokenizing a mixture can take longer.
        from orbax.checkpoint import multihost  # noqa: PLC0415

        multihost.get_barrier_sync_fn()(key="glm_jax_data_prepared", timeout_ms=3 * 3600 * 1000)


def _with_shared_cache(cfg: Config, workdir: str) -> Config:
    """`data.cache_dir` "" on a pod (a URL workdir, or several processes) means WORKDIR/data_cache:
    the hosts share no home directory, and the run's data stays with the run. One process on a
    local workdir keeps the per-user cache ($GLM_JAX_DATA_CACHE or ~/.cache/glm_jax/data)."""
    if cfg.data.cache_dir or not (storage.is_url(workdir) or jax.process_count() > 1):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=storage.join(workdir, "data_cache")))


def _with_checkpoint_tokenizer(cfg: Config) -> Config:
    """A run started from a params-only checkpoint that keeps its weights' tokenizer (from-hf
    does) tokenizes with it, unless the config names one (`data.tokenizer`)."""
    if not cfg.train.init_from or cfg.data.tokenizer:
        return cfg
    from glm_jax.data.tokenizer import checkpoint_tokenizer  # imports TensorFlow: only when needed

    path = checkpoint_tokenizer(cfg.train.init_from)
    return cfg if path is None else dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=path))


def run(cd, workdir: str, make_iterator: MakeIterator,
        prepare_data: Callable[[Config], Any] | None = None,
        heldout_batches: MakeIterator | None = None,
        seqio_evaluation: Callable[[Config], Any] | None = None) -> RunResult:
    """Runs every stage of a config (ConfigDict or dict with optional stage_order/stages) in
    `workdir` (local or gs://), resuming whatever was done there before."""
    workdir = storage.resolve(workdir)
    stages = [(name, _with_shared_cache(_with_checkpoint_tokenizer(cfg), workdir))
              for name, cfg in config_lib.resolve_stages(cd)]
    validation.check_run(stages, workdir, num_devices=jax.device_count(), num_processes=jax.process_count())
    ckpt_lib.write_stages(workdir, stages)
    _prepare(stages, prepare_data)
    start, prev, result = 0, None, None
    with _Preemption() as preemption:
        for name, cfg in stages:
            t0 = time.perf_counter()
            result = train_stage(name, cfg, workdir, start, prev, make_iterator, preemption, heldout_batches,
                                 seqio_evaluation)
            if result.status == "preempted":
                return result
            _log(f"[{name}] done at step {result.step} ({time.perf_counter() - t0:.1f} s)")
            start, prev = start + cfg.train.steps, (name, cfg)
    return result
