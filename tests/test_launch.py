"""launch/tpu.sh: --dry-run emits the gcloud commands a multi-host run needs, bad flags fail clearly,
and the commands it sends really run: through a gcloud stand-in (tests/launch/bin/gcloud) that
executes them on local worker directories as a multi-process jax.distributed job."""

import os
import shlex
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import REPO

TPU_SH = os.path.join(REPO, "launch", "tpu.sh")
STANDIN_BIN = os.path.join(REPO, "tests", "launch", "bin")


def _commands(stdout):
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ") and "(wait" not in line]


def _dry_run(*flags, script=TPU_SH, cwd=REPO):
    proc = subprocess.run(["bash", script, "--dry-run", *flags], capture_output=True, text=True, cwd=cwd)
    return proc, _commands(proc.stdout)


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
    # Every worker joins one jax.distributed job (Cloud TPU: jax detects coordinator and index).
    assert train == ("--command=cd ~/glm-jax && python3 -m glm_jax.train --config=configs/glm4_9b.py "
                     "--workdir=gs://bucket/glm4 --distributed --config.train.steps=1000")


def test_dry_run_quotes_extra_args_for_the_remote_shell():
    _, cmds = _dry_run("--name=a", "--zone=z", "--type=v5p-16", "--config=configs/debug.py", "--workdir=gs://b/r",
                       "--", "--config.data.mixture=a b;rm -rf ~")
    train = cmds[-1][-1].removeprefix("--command=")
    assert shlex.split(train)[-1] == "--config.data.mixture=a b;rm -rf ~"


def test_tarball_holds_the_code_only(tmp_path):
    """The tar command the launcher prints ships glm_jax, configs, data, launch, setup.py,
    README/LICENSE, and none of a checkout's local folders (.git, .venv, runs/, caches)."""
    checkout = tmp_path / "checkout"
    keep = ["glm_jax", "configs", "data", "launch", "setup.py", "README.md", "LICENSE", "tests", "benchmarks"]
    checkout.mkdir()
    subprocess.run(["cp", "-r", *(os.path.join(REPO, k) for k in keep), str(checkout)], check=True)
    junk = [".git/HEAD", ".venv/bin/python", "runs/debug/checkpoints/x", ".pytest_cache/v/x",
            "glm_jax/__pycache__/__init__.cpython-311.pyc", "glm_jax.egg-info/PKG-INFO", ".whl/x.whl", ".gl/x"]
    for rel in junk:
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text("junk")
    proc, cmds = _dry_run("--name=a", "--zone=z", "--type=v5p-16", "--config=configs/debug.py", "--workdir=gs://b",
                          script=str(checkout / "launch" / "tpu.sh"), cwd=checkout)
    assert proc.returncode == 0, proc.stderr
    tar = next(c for c in cmds if c[0] == "tar")
    out = tmp_path / "code.tar.gz"
    tar[tar.index("-czf") + 1] = str(out)
    subprocess.run(tar, check=True)
    with tarfile.open(out) as t:
        names = t.getnames()
    assert {n.split("/")[0] for n in names} == {"glm_jax", "configs", "data", "launch", "setup.py", "README.md",
                                                  "LICENSE"}
    assert {"glm_jax/train/__main__.py", "configs/debug.py", "launch/common.sh", "data/README.md"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or ".egg-info" in n]


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
    (["--name=a", "--zone=z", "--type=v5p-4", "--config=configs/debug.py", "--workdir=gs://b"], "smallest slice is v5p-8"),
    (["--name=a", "--zone=z", "--type=v6e-512", "--config=configs/debug.py", "--workdir=gs://b"], "at most 256 chips"),
])
def test_bad_flags_fail_before_any_command(flags, message):
    proc, cmds = _dry_run(*flags)
    assert proc.returncode == 2 and message in proc.stderr and cmds == []


def test_config_outside_the_checkout_is_refused(tmp_path):
    (tmp_path / "mine.py").write_text("")
    proc, cmds = _dry_run("--name=a", "--zone=z", "--type=v5p-8", f"--config={tmp_path / 'mine.py'}",
                          "--workdir=gs://b")
    assert proc.returncode == 2 and "outside this checkout" in proc.stderr and cmds == []
    # A path given from another directory, with a config arg, becomes the checkout-relative one.
    _, cmds = _dry_run("--name=a", "--zone=z", "--type=v5p-8", f"--config={REPO}/configs/debug.py:x",
                       "--workdir=gs://b", cwd=tmp_path)
    assert "--config=configs/debug.py:x" in shlex.split(cmds[-1][-1].removeprefix("--command="))


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
