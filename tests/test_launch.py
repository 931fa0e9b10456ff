"""launch/tpu.sh: --dry-run emits the gcloud commands a multi-host run needs, bad flags fail clearly,
and the commands it sends really run: through a gcloud stand-in (tests/launch/bin/gcloud) that
executes them on local worker directories as a multi-process jax.distributed job."""

import os
import shlex
import subprocess
import sys
import tarfile

import pytest

from tests import cli
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
    (["--name=a", "--zone=z", "--type=v5p-4", "--config=configs/debug.py", "--workdir=gs://b"],
     "smallest slice is v5p-8"),
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
    workdir = tmp_path / "run"
    env = cli.env(devices=None, PYTHON=sys.executable)  # local.sh gives each process its devices
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), "-n", "2", "--config=configs/debug.py",
                           f"--workdir={workdir}", "--config.train.steps=4", "--config.train.seq_len=128",
                           "--config.checkpoint.every_steps=2"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [(workdir / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    assert "finished at step 4" in logs[0]  # one job: process 0 reports for both
    assert "Traceback" not in logs[1] and "[main] step" not in logs[1], logs[1][-2000:]
    assert sorted(os.listdir(workdir / "checkpoints" / "main")) == ["2", "4"]


@pytest.mark.parametrize("workdir, log_flag, logs", [
    ("gs://bucket/run", None, "runs/logs/bucket/run"),  # a URL workdir: a local folder, never ./gs:
    ("gs://bucket/run", "--log_dir=mine", "mine"),
    ("local/run", None, "local/run/logs"),
])
def test_local_sh_writes_process_logs_to_a_local_folder_it_names(tmp_path, workdir, log_flag, logs):
    """Where the processes' logs land, through the real script: each process fails fast (an unknown
    config field), so its log holds that error; the folder is printed on start and on failure."""
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), "-n", "2",
                           f"--config={REPO}/configs/debug.py", f"--workdir={workdir}", *([log_flag] if log_flag else []),
                           "--config.no_such_field=1"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    folder = tmp_path / logs
    assert f"process logs in {folder}/" in proc.stderr and f"see {folder}/" in proc.stderr, proc.stderr
    assert sorted(os.listdir(folder)) == ["process_0.log", "process_1.log"]
    assert all("no_such_field" in (folder / f"process_{i}.log").read_text() for i in range(2))
    assert not (tmp_path / "gs:").exists()


def test_local_sh_needs_a_process_count():
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), "--workdir=/tmp/x"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "-n N" in proc.stderr


def test_train_cli_names_a_bad_process_env():
    env = cli.env(JAX_NUM_PROCESSES="two", JAX_COORDINATOR_ADDRESS="127.0.0.1:1")
    proc = cli.run("-m", "glm_jax.train", "--config=configs/debug.py", "--workdir=/nonexistent", "--distributed",
                   env=env, timeout=120, check=False)
    assert proc.returncode != 0
    assert "JAX_NUM_PROCESSES='two' is not an integer" in proc.stderr and "--num_processes" in proc.stderr


# ---- the gcloud stand-in: what launch/tpu.sh sends, run on local worker directories ------------

def _standin_env(state, **extra):
    return cli.env(devices=None, PATH=STANDIN_BIN + os.pathsep + os.environ["PATH"], GCLOUD_STANDIN_STATE=state,
                   GCLOUD_STANDIN_PYTHON=sys.executable, **extra)


def _gcloud(env, *args, timeout=120):
    return subprocess.run(["gcloud", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("accelerator, hosts, per_host", [("v5p-16", 2, 4), ("v5litepod-16", 4, 4), ("v6e-8", 1, 8)])
def test_gcloud_standin_runs_ssh_on_every_worker_with_tpu_env(tmp_path, accelerator, hosts, per_host):
    env = _standin_env(tmp_path / "state")
    create = _gcloud(env, "compute", "tpus", "queued-resources", "create", "n-qr", "--node-id=n", "--zone=z",
                     f"--accelerator-type={accelerator}", "--runtime-version=r")
    assert create.returncode == 0, create.stderr
    describe = _gcloud(env, "compute", "tpus", "queued-resources", "describe", "n-qr", "--zone=z",
                       "--format=value(state.state)")
    assert describe.stdout.strip() == "ACTIVE"
    (tmp_path / "f.txt").write_text("payload")
    assert _gcloud(env, "compute", "tpus", "tpu-vm", "scp", str(tmp_path / "f.txt"), "n:sub/f.txt", "--zone=z",
                   "--worker=all").returncode == 0
    script = ('echo "$TPU_WORKER_ID $JAX_PROCESS_ID $JAX_NUM_PROCESSES $JAX_COORDINATOR_ADDRESS $XLA_FLAGS '
              '$JAX_PLATFORMS ${PYTHONPATH:-none} $(cat sub/f.txt) $(pwd) $HOME $(command -v python3)"; '
              'echo "$TPU_WORKER_ID" > mine; exit $((TPU_WORKER_ID * 3))')
    ssh = _gcloud(env, "compute", "tpus", "tpu-vm", "ssh", "n", "--zone=z", "--worker=all", f"--command={script}")
    assert ssh.returncode == (3 if hosts > 1 else 0), ssh.stderr
    assert "no mount namespaces" not in ssh.stderr, ssh.stderr  # same paths need unshare -m or -Urm
    lines = sorted(ssh.stdout.splitlines())
    assert len(lines) == hosts
    coordinators = set()
    for i, line in enumerate(lines):
        prefix, rest = line.split("] ", 1)
        wid, pid, n, coord, xla, plat, pypath, payload, cwd, home, python = rest.split(" ")
        worker = tmp_path / "state" / "tpus" / "n" / f"worker-{i}"
        assert (prefix, wid, pid, n) == (f"[worker {i}", str(i), str(i), str(hosts))
        assert (xla, plat, pypath, payload) == (f"--xla_force_host_platform_device_count={per_host}", "cpu", "none",
                                                "payload")
        # Same paths on every worker, as on a slice's VMs; what each writes stays on its own disk.
        vm = tmp_path / "state" / "tpus" / "n" / "vm"
        assert cwd == home == str(vm / "home") and python == str(vm / "image" / "bin" / "python3")
        assert (worker / "home" / "mine").read_text() == f"{i}\n"
        coordinators.add(coord)
    assert len(coordinators) == 1 and coordinators.pop().startswith("127.0.0.1:")
    assert "NOT_FOUND" in _gcloud(env, "compute", "tpus", "tpu-vm", "ssh", "other", "--zone=z", "--worker=all",
                                  "--command=true").stderr
    delete = _gcloud(env, "compute", "tpus", "queued-resources", "delete", "n-qr", "--zone=z", "--force", "--quiet")
    assert delete.returncode == 0 and not (tmp_path / "state" / "tpus" / "n").exists()


def test_launcher_stops_on_a_failed_queued_resource(tmp_path):
    env = _standin_env(tmp_path / "state", GCLOUD_STANDIN_QR_STATE="FAILED", TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", TPU_SH, "--name=t", "--zone=z", "--type=v5p-8", "--config=configs/debug.py",
                           "--workdir=gs://b/r"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "queued resource t-qr is FAILED" in proc.stderr and "--delete" in proc.stderr
    assert "tpu-vm" not in proc.stdout
    assert os.listdir(tmp_path / "state" / "tpus" / "t" / "worker-0" / "home") == []


def _editable_install_of(python):
    """What `python` (outside any cwd/PYTHONPATH) imports glm_jax from, and its install files' bytes."""
    out = subprocess.run([python, "-c", "import glm_jax, sysconfig; print(glm_jax.__file__); "
                          "print(sysconfig.get_path('purelib'))"], cwd="/", capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, check=True).stdout.split()
    site = out[1]
    files = {}
    for entry in sorted(os.listdir(site)):
        if "glm_jax" in entry.replace("-", "_"):
            path = os.path.join(site, entry)
            for root, _, names in os.walk(path) if os.path.isdir(path) else [(site, [], [entry])]:
                for name in names:
                    with open(os.path.join(root, name), "rb") as f:
                        files[os.path.join(root, name)] = f.read()
    return out[0], files


@pytest.fixture(scope="module")
def launched(gcs_server, tmp_path_factory):
    """launch/tpu.sh's real commands through the stand-in: a v5p-16 slice (2 workers x 4 CPU
    devices) trains the debug model on the bundled mixture into gs://BUCKET/run (the emulator).
    The launcher's output is kept in launch.log next to the stand-in's state."""
    from tests.gcs import make_bucket

    tmp = tmp_path_factory.mktemp("launch")
    bucket = make_bucket(gcs_server, f"launch-{os.getpid()}")
    venv_before = _editable_install_of(sys.executable)
    env = _standin_env(tmp / "state", TMPDIR=str(tmp), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = ["bash", TPU_SH, "--name=t", "--zone=z", "--type=v5p-16", "--config=configs/debug.py",
           f"--workdir={bucket}/run", "--", "--config.train.steps=4", "--config.train.seq_len=128",
           "--config.checkpoint.every_steps=2", "--config.train.log_every=2"]
    with open(tmp / "launch.log", "w+") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own process group: a timeout ends every worker
        try:
            proc.wait(timeout=1200)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.seek(0)
        out = log.read()
    return dict(returncode=proc.returncode, out=out, log=tmp / "launch.log", bucket=bucket, venv_before=venv_before,
                env=env, workers=[tmp / "state" / "tpus" / "t" / f"worker-{i}" for i in range(2)])


@pytest.mark.slow
def test_launcher_installs_only_glm_jax_on_every_worker(launched):
    """The install step tpu.sh sends ran on each worker: glm-jax (and nothing else) went into the
    worker's environment, editable from the shipped code; the test venv's install is untouched;
    then each worker started the trainer."""
    out = launched["out"]
    assert "[worker 0] " in out and "[worker 1] " in out, out[-4000:]
    for worker in launched["workers"]:
        python = str(worker / "image" / "bin" / "python3")
        site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        installed = set(os.listdir(site)) - {"tpu-vm-image.pth", "__pycache__"}
        assert installed and all("glm_jax" in e.replace("-", "_") for e in installed), installed
        shipped = set(os.listdir(worker / "home" / "glm-jax"))
        assert {"glm_jax", "configs", "data", "launch", "setup.py", "README.md", "LICENSE"} <= shipped
        assert not shipped & {".git", ".venv", "tests", "runs", "notebooks", "benchmarks", ".pytest_cache"}
    # On the workers, outside the checkout, glm_jax imports from the shipped code.
    where = _gcloud(launched["env"], "compute", "tpus", "tpu-vm", "ssh", "t", "--zone=z", "--worker=all",
                    "--command=cd / && python3 -c 'import glm_jax; print(glm_jax.__file__)'")
    home = launched["workers"][0].parent / "vm" / "home"
    assert sorted(where.stdout.splitlines()) == [f"[worker {i}] {home}/glm-jax/glm_jax/__init__.py" for i in range(2)]
    assert _editable_install_of(sys.executable) == launched["venv_before"]


@pytest.mark.slow
def test_launcher_end_to_end_trains_one_job_on_every_worker(launched):
    out = launched["out"]
    assert launched["returncode"] == 0, f"exit {launched['returncode']}; {launched['log']}:\n{out[-6000:]}"
    assert "[worker 0] finished at step 4" in out
    # One jax.distributed job: only process 0 logs. Hosts training alone would each be a process 0.
    assert "[worker 0] [main]" in out and "[worker 1] [main]" not in out


@pytest.mark.slow
def test_launcher_end_to_end_writes_the_run_to_the_bucket(launched, gcs_server):
    from tests.gcs import list_objects

    assert launched["returncode"] == 0, f"exit {launched['returncode']}; see {launched['log']}"
    objects = list_objects(gcs_server, launched["bucket"], prefix="run/")
    assert "run/config.json" in objects, objects
    assert any(o.startswith("run/checkpoints/main/2/") for o in objects), objects
    assert any(o.startswith("run/checkpoints/main/4/") for o in objects), objects
    assert any("metrics" in o for o in objects), objects
    assert any("events.out.tfevents" in o for o in objects), objects
    # The data cache was built once, by process 0, into the bucket; worker 1 read it from there.
    out = launched["out"]
    tokenized = [line for line in out.splitlines() if "data: tokenized task" in line]
    assert len(tokenized) == 3 and all(line.startswith("[worker 0]") for line in tokenized), tokenized
    assert {"bundled_zh", "bundled_en", "bundled_code"} == {line.split("'")[1] for line in tokenized}
    assert any(o.startswith("run/data_cache/") and o.endswith("meta.json") for o in objects), objects
    # The tokenized data cache is shared too: no worker built one on its own disk (the default
    # ~/.cache/glm_jax/data is per host on a pod, so process 1 would find nothing there).
    for worker in launched["workers"]:
        local_cache = worker / "home" / ".cache" / "glm_jax" / "data"
        assert not local_cache.exists() or os.listdir(local_cache) == [], os.listdir(local_cache)
    # Nothing went to a local folder named after the URL, on any worker or here.
    local = [os.path.join(root, d) for top in [*launched["workers"], REPO] for root, dirs, _ in os.walk(top)
             for d in dirs if d.startswith("gs:")]
    assert local == []


# ---- GKE: launch/gke.sh writes a JobSet the way xpk does --------------------------------------

GKE_SH = os.path.join(REPO, "launch", "gke.sh")


def _gke_dry_run(*flags):
    proc = subprocess.run(["bash", GKE_SH, "--dry-run", *flags], capture_output=True, text=True, cwd=REPO)
    manifest = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("+ "))
    return proc, manifest, _commands(proc.stdout)


@pytest.mark.parametrize("accelerator, hosts, chips, topology, label", [
    ("v5p-128", 16, 4, "4x4x4", "tpu-v5p-slice"),  # values from xpk's system_characteristics.py
    ("v5litepod-16", 4, 4, "4x4", "tpu-v5-lite-podslice"),
    ("v6e-64", 16, 4, "8x8", "tpu-v6e-slice"),
    ("v4-32", 4, 4, "2x2x4", "tpu-v4-podslice"),
    ("v5p-8", 1, 4, "2x2x1", "tpu-v5p-slice"),
])
def test_gke_dry_run_prints_a_jobset_for_the_slice(accelerator, hosts, chips, topology, label):
    import yaml

    flags = [f"--type={accelerator}", "--config=configs/glm4_9b.py", "--workdir=gs://bucket/glm4"]
    proc, manifest, cmds = _gke_dry_run("--name=glm4", "--image=us-docker.pkg.dev/p/r/glm-jax:1", *flags,
                                        "--", "--config.train.steps=1000", "--config.data.mixture=a b")
    assert proc.returncode == 0, proc.stderr
    jobset = yaml.safe_load(manifest)
    assert (jobset["apiVersion"], jobset["kind"], jobset["metadata"]["name"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet",
                                                                                  "glm4")
    assert jobset["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"] == \
        "cloud.google.com/gke-nodepool"
    (rjob,) = jobset["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["replicas"] == 1 and job["parallelism"] == job["completions"] == hosts and job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": label,
                                   "cloud.google.com/gke-tpu-topology": topology}
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"google.com/tpu": chips}
    env = {e["name"]: e for e in container["env"]}
    assert env["JAX_NUM_PROCESSES"]["value"] == str(hosts)
    assert env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["JAX_COORDINATOR_ADDRESS"]["value"] == "$(JOBSET_NAME)-$(REPLICATED_JOB_NAME)-0-0.$(JOBSET_NAME):8476"
    # The pods run exactly the train command launch/tpu.sh sends to its workers (after `cd ~/glm-jax`).
    _, tpu_cmds = _dry_run("--name=glm4", "--zone=z", *flags, "--", "--config.train.steps=1000",
                           "--config.data.mixture=a b")
    tpu_train = tpu_cmds[-1][-1].removeprefix("--command=")
    assert container["command"][:2] == ["bash", "-c"]
    assert "cd ~/glm-jax && " + container["command"][2] == tpu_train
    assert container["workingDir"] == "/app"
    assert len(cmds) == 1 and cmds[0][:3] == ["kubectl", "apply", "-f"] and cmds[0][3].endswith("glm4.jobset.yaml")


def test_gke_writes_the_manifest_it_applies(tmp_path):
    """Without --dry-run the manifest is written and `kubectl apply -f` runs on it (a kubectl on
    PATH that records its arguments and the file it was given stands in for the cluster)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text('#!/bin/sh\necho "$@" > "$KUBECTL_LOG"\ncp "$3" "$KUBECTL_LOG.yaml"\n')
    (bin_dir / "kubectl").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", KUBECTL_LOG=str(tmp_path / "log"))
    out = tmp_path / "jobset.yaml"
    proc = subprocess.run(["bash", GKE_SH, "--name=run1", "--type=v6e-64", "--image=img:1", "--config=configs/debug.py",
                           "--workdir=gs://b/r", f"--out={out}"], env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "log").read_text().split() == ["apply", "-f", str(out)]
    assert (tmp_path / "log.yaml").read_text() == out.read_text() and "kind: JobSet" in out.read_text()


def test_dockerfile_ships_what_the_tarball_ships():
    with open(os.path.join(REPO, "launch", "Dockerfile")) as f:
        copied = {src for line in f if line.startswith("COPY ") for src in line.split()[1:-1]}
    names = subprocess.run(["bash", "-c", f"die() {{ exit 2; }}; source {REPO}/launch/common.sh; "
                            'printf "%s\\n" "${CODE_PATHS[@]}"'], capture_output=True, text=True, check=True).stdout
    assert copied == set(names.split())


@pytest.mark.parametrize("flags, message", [
    (["--name=a", "--type=v5p-8", "--config=configs/debug.py", "--workdir=gs://b"], "--image is required"),
    (["--name=a", "--type=v5p-8", "--image=i", "--config=configs/debug.py", "--workdir=/x"], "must be a gs:// path"),
    (["--name=a", "--type=v7-8", "--image=i", "--config=configs/debug.py", "--workdir=gs://b"], "unknown --type"),
    (["--name=A_b", "--type=v5p-8"], "--name 'A_b' must be lowercase"),
    (["--name=a", "--type=v5p-8", "--image=i", "--config=configs/nope.py", "--workdir=gs://b"], "does not exist"),
    (["--name=a", "--bogus"], "unknown flag '--bogus'"),
])
def test_gke_bad_flags_fail_before_any_command(flags, message):
    proc, _, cmds = _gke_dry_run(*flags)
    assert proc.returncode == 2 and message in proc.stderr and cmds == [] and proc.stdout == ""


def test_gke_delete():
    _, _, cmds = _gke_dry_run("--name=glm4", "--namespace=team", "--delete")
    assert cmds == [["kubectl", "delete", "jobset", "glm4", "--namespace=team"]]


@pytest.mark.parametrize("script", [TPU_SH, GKE_SH])
def test_help_prints_the_header_only(script):
    proc = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0].startswith("# Submit") and all(line.startswith("#") for line in lines)
    assert "--dry-run" in proc.stdout
