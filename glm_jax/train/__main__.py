"""Train a GLM model: every stage of a config, sharded over all devices, resumable.

Every host runs the same command line; only its environment differs. With `--distributed`, the
process count and this process's index come from --num_processes / --process_id or, when those
are not given, from JAX_NUM_PROCESSES / JAX_PROCESS_ID (jax itself reads JAX_COORDINATOR_ADDRESS):
launch/local.sh, the tests' gcloud stand-in and GKE pods set them; Cloud TPU VMs need none.

    python -m glm_jax.train --config=configs/debug.py --workdir=/tmp/run1 \\
        --config.mesh.fsdp=4 --config.mesh.tensor=2 --config.train.steps=200

Rerunning the same command in the same workdir resumes from the latest checkpoint. On several
hosts, start the same command on each with `--distributed` (Cloud TPU detects the rest; on CPU
pass --coordinator_address, --num_processes and --process_id).
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file (`file.py:arg` passes arg).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the resolved config.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def make_data_iterator(cfg, *, process_index: int, process_count: int):
    """The data pipeline of `cfg.data.mixture` (glm_jax.data), imported only when training."""
    from glm_jax.data.loader import make_iterator  # noqa: PLC0415 (lazy: data is optional for tools)

    return make_iterator(cfg, process_index=process_index, process_count=process_count)


def main(argv):
    del argv
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_flag_or_env(_NUM_PROCESSES, "JAX_NUM_PROCESSES", "the process count"),
                                   process_id=_flag_or_env(_PROCESS_ID, "JAX_PROCESS_ID", "this process's index"))
    from glm_jax.train import loop

    result = loop.run(_CONFIG.value, _WORKDIR.value, make_iterator=make_data_iterator)
    print(f"{result.status} at step {result.step} (stage {result.stage!r}); workdir {_WORKDIR.value}", flush=True)


def _flag_or_env(flag, env: str, what: str) -> int | None:
    """`--flag` when given, else the integer in $env, else None (jax.distributed then detects it)."""
    import os  # noqa: PLC0415

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
    app.run(main)
