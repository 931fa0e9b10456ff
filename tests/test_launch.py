"""launch/tpu.sh --dry-run emits the gcloud commands a multi-host run needs; bad flags fail clearly."""

import os
import shlex
import subprocess

import pytest

from tests.conftest import REPO

TPU_SH = os.path.join(REPO, "launch", "tpu.sh")


def _dry_run(*flags):
    proc = subprocess.run(["bash", TPU_SH, "--dry-run", *flags], capture_output=True, text=True, cwd=REPO)
    commands = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ") and "(wait" not in line]
    return proc, commands


def test_dry_run_creates_installs_trains_on_all_workers():
    proc, cmds = _dry_run("--name=glm4", "--zone=us-east5-a", "--type=v5p-128", "--config=configs/glm4_9b.py",
                          "--workdir=gs://bucket/glm4", "--project=my-proj", "--spot", "--",
                          "--config.train.steps=1000")
    assert proc.returncode == 0, proc.stderr
    create = cmds[0]
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert {"--node-id=glm4", "--zone=us-east5-a", "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5",
            "--project=my-proj", "--spot"} <= set(create)
    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
    install, train = (next(a for a in c if a.startswith("--command=")) for c in ssh)
    assert "pip install" in install and "[tpu]" in install
    assert ("python3 -m glm_jax.train --config=configs/glm4_9b.py --workdir=gs://bucket/glm4 "
            "--config.train.steps=1000") in train


def test_delete_and_v5e_runtime():
    proc, cmds = _dry_run("--name=glm4", "--zone=z", "--delete")
    assert cmds == [["gcloud", "compute", "tpus", "queued-resources", "delete", "glm4-qr", "--zone=z", "--force",
                     "--quiet"]]
    _, cmds = _dry_run("--name=a", "--zone=z", "--type=v5litepod-16", "--config=configs/debug.py", "--workdir=gs://b")
    assert "--runtime-version=v2-alpha-tpuv5-lite" in cmds[0]


@pytest.mark.parametrize("flags, message", [
    (["--name=a", "--zone=z", "--type=v9-8", "--config=configs/debug.py", "--workdir=gs://b"], "unknown --type 'v9-8'"),
    (["--name=a", "--zone=z", "--type=v5p-12", "--config=configs/debug.py", "--workdir=gs://b"], "power of two"),
    (["--name=a", "--zone=z", "--type=v5p-8", "--config=configs/debug.py"], "--workdir is required"),
    (["--name=a", "--zone=z", "--type=v5p-8", "--config=configs/debug.py", "--workdir=/tmp/x"], "must be a gs:// path"),
    (["--name=a", "--zone=z", "--type=v5p-8", "--config=configs/nope.py", "--workdir=gs://b"], "does not exist"),
    (["--zone=z"], "--name is required"),
    (["--name=a", "--zone=z", "--frobnicate"], "unknown flag '--frobnicate'"),
])
def test_bad_flags_fail_before_any_command(flags, message):
    proc, cmds = _dry_run(*flags)
    assert proc.returncode == 2 and message in proc.stderr and cmds == []


@pytest.mark.slow
def test_local_sh_trains_two_processes_and_checkpoints(tmp_path):
    import sys

    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), "-n", "2", "--config=configs/debug.py",
                           f"--workdir={workdir}", "--config.train.steps=4", "--config.train.seq_len=128",
                           "--config.checkpoint.every_steps=2"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i in range(2):
        assert "finished at step 4" in (workdir / "logs" / f"process_{i}.log").read_text()
    assert sorted(os.listdir(workdir / "checkpoints" / "main")) == ["2", "4"]


def test_local_sh_needs_a_process_count():
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), "--workdir=/tmp/x"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "-n N" in proc.stderr
