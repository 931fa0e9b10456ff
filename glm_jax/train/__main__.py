"""Train a GLM model: every stage of a config, sharded over all devices, resumable.

Every host runs the same command line; only its environment differs. With `--distributed`, the
process count and this process's index come from --num_processes / --process_id or, when those
are not given, from JAX_NUM_PROCESSES / JAX_PROCESS_ID (jax itself reads JAX_COORDINATOR_ADDRESS):
launch/local.sh, the tests' gcloud stand-in and GKE pods set them; Cloud TPU VMs need none.

    python -m glm_jax.train --config=configs/debug.py --workdir=/tmp/run1 \\
        --config.mesh.fsdp=4 --config.mesh.tensor=2 --config.train.steps=200

Rerunning the same command in the same workdir (local or gs://) resumes from the latest
checkpoint, on any number of hosts. Process 0 prints one progress line per log step; library logging (absl,
orbax, TensorFlow, XLA's start-up lines) stays off unless `--verbose`.
"""

import os

from absl import flags
from ml_collections import config_flags

from glm_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file (`file.py:arg` passes arg).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the resolved config.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def make_data_iterator(cfg, *, rows):
    """The data pipeline of `cfg.data.mixture` (glm_jax.data), imported only when training."""
    from glm_jax.data.loader import make_iterator  # noqa: PLC0415 (lazy: data is optional for tools)

    return make_iterator(cfg, rows=rows, build_missing=False)  # prepare_data built them


def heldout_data(cfg, *, rows):
    """Held-out batches of the tasks `eval.mixture` evaluates (glm_jax.data.loader)."""
    from glm_jax.data.loader import heldout_batches  # noqa: PLC0415

    return heldout_batches(cfg, rows=rows, build_missing=False)  # prepare_data built them


def seqio_evaluation(cfg):
    """The metric_fns of `eval.seqio_tasks` (glm_jax.eval.seqio_eval), on the training batch's rows."""
    from glm_jax.config import ConfigError  # noqa: PLC0415
    from glm_jax.data.errors import DataError  # noqa: PLC0415
    from glm_jax.eval.seqio_eval import SeqioEvaluation  # noqa: PLC0415

    try:
        return SeqioEvaluation(cfg.eval.seqio_tasks, cfg.eval.seqio_split, cfg.model, rows=cfg.train.batch_size)
    except DataError as e:  # e.g. an example longer than the model's context
        raise ConfigError("eval.seqio_tasks", str(e)) from None


def prepare_data(cfg):
    """Tokenizes the mixture's missing caches into data.cache_dir (run by process 0 only)."""
    from glm_jax.data.loader import build_caches  # noqa: PLC0415

    for task in build_caches(cfg):
        print(f"data: tokenized task {task!r} into {cfg.data.cache_dir or 'the local cache'}", flush=True)


def main(argv):
    del argv
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_flag_or_env(_NUM_PROCESSES, "JAX_NUM_PROCESSES", "the process count"),
                                   process_id=_flag_or_env(_PROCESS_ID, "JAX_PROCESS_ID", "this process's index"))
    from glm_jax.train import loop

    result = loop.run(_CONFIG.value, _WORKDIR.value, make_iterator=make_data_iterator, prepare_data=prepare_data,
                      heldout_batches=heldout_data, seqio_evaluation=seqio_evaluation)
    if jax.process_index() == 0:
        print(f"{result.status} at step {result.step} (stage {result.stage!r}); workdir {_WORKDIR.value}", flush=True)
    if _DISTRIBUTED.value:
        # Every process leaves through the coordination service's shutdown barrier now, not in an
        # atexit hook: the coordinator tearing its service down at interpreter exit while another
        # process still had a call open aborted it (gRPC "Check failed: queue.Pop() == nullptr").
        jax.distributed.shutdown()


def _flag_or_env(flag, env: str, what: str) -> int | None:
    """`--flag` when given, else the integer in $env, else None (jax.distributed then detects it)."""
    if flag.value is not None:
        return flag.value
    value = os.environ.get(env, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{env}={value!r} is not an integer: set it to {what}, or pass --{flag.name}") from None


if __name__ == "__main__":
    cli.run(main)
