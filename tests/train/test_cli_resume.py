"""Through the real `python -m glm_jax.train` on the bundled seqio mixture: SIGTERM mid-run, then a
restart, gives bit-identical per-step losses to a straight run (model, optimizer and data order)."""

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.train.test_resume import _losses

FLAGS = ["--config=configs/debug.py", "--config.train.steps=12", "--config.train.seq_len=128",
         "--config.checkpoint.every_steps=4", "--config.train.log_every=1", "--config.mesh.fsdp=4",
         "--config.mesh.tensor=2", "--config.data.mixture=bundled_zh_en"]


def _env(cache):
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
                XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


@pytest.mark.slow
def test_sigterm_through_the_cli_on_bundled_data_resumes_exactly(tmp_path):
    cache = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "glm_jax.train"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(cmd + FLAGS + [f"--workdir={straight}"], env=_env(cache), cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    proc = subprocess.Popen(cmd + FLAGS + [f"--workdir={resumed}"], env=_env(cache), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if "step 6/12" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out += proc.stdout.readlines()
    assert proc.wait(timeout=300) == 0, "".join(out)[-3000:]
    assert "preempted at step" in "".join(out)
    again = subprocess.run(cmd + FLAGS + [f"--workdir={resumed}"], env=_env(cache), cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and "restored checkpoint at step" in again.stdout + again.stderr
    want = _losses(straight)
    assert sorted(want) == list(range(1, 13))
    assert _losses(resumed) == want  # bit for bit, data order included
