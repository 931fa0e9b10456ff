"""Real processes: kill -9 mid-save recovers the last complete checkpoint. SIGTERM preemption is
tested where users meet it: through the CLI on the bundled data (test_cli_resume.py) and on
several processes on gs:// (test_pod.py).

Each run is `tests/train/worker.py`: the real loop (`glm_jax.train.loop.run`) over the synthetic
grain pipeline, on the debug model."""

import os
import signal
import subprocess
import sys

import pytest

from tests import cli
from tests.conftest import REPO

WORKER = os.path.join(REPO, "tests", "train", "worker.py")
RUN = ["mesh.fsdp=2", "mesh.tensor=2", "train.seq_len=32", "train.steps=20", "train.log_every=1",
       "checkpoint.every_steps=5"]


def _cmd(workdir, devices=4, dist=(), overrides=RUN):
    return [sys.executable, WORKER, str(workdir), str(devices), *map(str, dist), "--", *overrides]


def _run(cmd, timeout=300):
    proc = subprocess.run(cmd, env=cli.env(devices=None), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _run_until(cmd, marker, sig, timeout=300):
    """Starts `cmd`, sends `sig` as soon as a stdout line contains `marker`; returns (rc, stdout)."""
    proc = subprocess.Popen(cmd, env=cli.env(devices=None), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if marker in line:
                proc.send_signal(sig)
                break
        out += proc.stdout.readlines()
        return proc.wait(timeout=timeout), "".join(out)
    finally:
        if proc.poll() is None:
            proc.kill()


def _losses(workdir):
    """{step: loss} of the run's metrics; a step repeated after a restart keeps its last value."""
    from glm_jax.train import metrics

    return {r["step"]: r["loss"] for r in metrics.read_rows(str(workdir))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    assert "RESULT finished 20" in _run(_cmd(workdir))
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, 21))
    return losses


@pytest.mark.slow
def test_kill_9_during_an_async_save_restores_the_last_complete_checkpoint(reference, tmp_path):
    rc, out = _run_until(_cmd(tmp_path), "checkpoint step 10: saving", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    stage = tmp_path / "checkpoints" / "main"
    interrupted = any(name.startswith("10.") and "tmp" in name for name in os.listdir(stage))
    out = _run(_cmd(tmp_path))
    restored = int(out.split("restored checkpoint at step ")[1].split()[0])
    # Usually the kill lands mid-write (a temporary step-10 directory is left): step 5 is restored.
    assert restored == (5 if interrupted else 10)
    assert "RESULT finished 20" in out
    assert _losses(tmp_path) == reference
