"""Real TPU compilation without a TPU: the attention kernels and the MoE grouped matmul (fwd+bwd)
compile for v5e:2x2 and v5p:2x2x1 (Mosaic checks each chip's VMEM use and layouts), and the debug
model's training step with each Pallas attention backend for v5e:2x2 (the step's sharding and fusion
do not depend on the generation). Each topology compiles in a subprocess (tests/kernels/tpu_compile.py)
so libtpu stays out of the CPU test process."""

import json

import pytest

from tests import cli

KERNELS = ["flash fwd+bwd B1 T2048 H32 K2 E128 packed", "flash fwd+bwd B2 T1024 H8 K2 E64",
           "splash fwd+bwd B1 T2048 H32 K2 E128 packed", "splash fwd+bwd B2 T1024 H8 K2 E64",
           "megablox gmm fwd+bwd M4000 D4096 C1408 X8"]
STEPS = ["train step flash", "train step splash"]


@pytest.mark.slow
@pytest.mark.parametrize("topology, expected", [("v5e:2x2", KERNELS + STEPS), ("v5p:2x2x1", KERNELS)])
def test_kernels_and_train_steps_compile_for_tpu(topology, expected):
    pytest.importorskip("libtpu", reason="needs the [tpu] extra (libtpu)")
    proc = cli.run("-m", "tests.kernels.tpu_compile", topology, *([] if expected[-1] in STEPS else ["--kernels-only"]),
                   env=cli.tpu_env(), timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    compiled = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [c["what"] for c in compiled] == expected
