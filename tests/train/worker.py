"""Runs the real training loop in its own process, on the synthetic grain pipeline.

    python tests/train/worker.py WORKDIR DEVICES [PROCESS_ID NUM_PROCESSES PORT] -- override ...

Used by the preemption, kill -9 and two-process tests (which need real processes). It is what
`python -m glm_jax.train` does, with the data factory swapped for tests/train/synthetic.py.
"""

import os
import sys

args, _, overrides = " ".join(sys.argv[1:]).partition(" -- ")
args = args.split()
workdir, devices = args[0], int(args[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

if len(args) > 2:
    process_id, num_processes, port = map(int, args[2:5])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                               process_id=process_id)

import synthetic  # noqa: E402

from glm_jax import config  # noqa: E402
from glm_jax.train import loop  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
cd = config.apply_overrides(config.load_config_dict(os.path.join(REPO, "configs", "debug.py")), overrides.split())
result = loop.run(cd, workdir, make_iterator=synthetic.make_iterator)
print(f"RESULT {result.status} {result.step}", flush=True)
if len(args) > 2:
    jax.distributed.shutdown()  # as `python -m glm_jax.train --distributed` leaves: not in gRPC teardown at exit
