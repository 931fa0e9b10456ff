"""`python -m glm_jax.train`: flags and config overrides reach the loop; bad values fail first."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_cli_reports_a_config_error_naming_the_field(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-m", "glm_jax.train", "--config=configs/debug.py", f"--workdir={tmp_path}",
                           "--config.mesh.data=3", "--config.mesh.fsdp=1"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "config field `mesh`" in proc.stderr and "8 devices" in proc.stderr
    assert not (tmp_path / "config.json").exists()  # refused before anything is written
