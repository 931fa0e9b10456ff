"""The pod path as it runs: several processes (jax.distributed on 127.0.0.1, CPU devices) on a
gs:// workdir in a real GCS emulator. Preemption of one worker, resume on another process count,
rows shared across processes, export from the bucket.

Each run is `tests/train/worker.py` (the real loop over the synthetic grain pipeline, whose row
r of every global batch is its own stream). Warmup outlasts every run here, so the learning rate
does not depend on train.steps and a run continued with more steps equals one run straight."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from glm_jax import storage
from tests import cli
from tests.conftest import REPO

WORKER = os.path.join(REPO, "tests", "train", "worker.py")
SMALL = ["model.num_layers=1", "model.hidden_size=64", "model.ffn_hidden_size=128",  # vocab: the bundled tokenizer's
         "train.seq_len=32", "train.batch_size=8", "train.warmup_steps=100", "train.log_every=1",
         "checkpoint.every_steps=2"]
TWO = ["mesh.fsdp=4", "mesh.tensor=2"]  # 2 processes x 4 devices
ONE = ["mesh.fsdp=2", "mesh.tensor=2"]  # 1 process x 4 devices: another mesh, params resharded on restore

pytestmark = pytest.mark.slow


def _start(workdir, n, overrides, devices=4):
    port = cli.free_port()
    cmds = [[sys.executable, WORKER, workdir, str(devices), *([str(i), str(n), str(port)] if n > 1 else []), "--",
             *overrides] for i in range(n)]
    return [subprocess.Popen(c, env=cli.env(devices=None), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for c in cmds]


def _finish(procs, timeout=400):
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _run(workdir, n, overrides, devices=4):
    return _finish(_start(workdir, n, overrides, devices))


def _rows(workdir):
    from glm_jax.train import metrics

    return {r["step"]: r for r in metrics.read_rows(workdir)}


def _data_state(workdir, step):
    d = f"{workdir}/checkpoints/main/{step}/data"
    return {name: storage.read_text(f"{d}/{name}") for name in storage.listdir(d) if name.startswith("row_")}


@pytest.fixture(scope="module")
def reference(gcs_server, tmp_path_factory):
    """2 processes, 8 steps straight through, on gs://."""
    from tests.gcs import make_bucket

    bucket = make_bucket(gcs_server, "pod-reference")
    workdir = f"{bucket}/straight"
    outs = _run(workdir, 2, [*SMALL, *TWO, "train.steps=8"])
    assert all("RESULT finished 8" in o for o in outs)
    rows = _rows(workdir)
    assert sorted(rows) == list(range(1, 9))
    return workdir, rows


def test_sigterm_to_one_worker_saves_the_same_step_everywhere_and_resumes_bit_identically(
        reference, gcs_bucket, tmp_path):
    ref_dir, ref = reference
    workdir = f"{gcs_bucket}/preempted"
    run = [*SMALL, *TWO, "train.steps=8"]
    procs = _start(workdir, 2, run)
    out0 = []
    for line in procs[0].stdout:  # process 0 prints the progress lines
        out0.append(line)
        if "step 3/8" in line:
            procs[1].send_signal(signal.SIGTERM)  # what Cloud TPU maintenance sends to one host
            break
    rest0, _ = procs[0].communicate(timeout=400)
    out1, _ = procs[1].communicate(timeout=400)
    out0 = "".join(out0) + rest0
    assert procs[0].returncode == 0 and procs[1].returncode == 0, out0[-3000:] + out1[-3000:]
    stopped = [int(o.split("RESULT preempted ")[1].split()[0]) for o in (out0, out1)]
    assert stopped[0] == stopped[1] and 3 <= stopped[0] < 8, (out0[-2000:], out1[-2000:])
    assert str(stopped[0]) in storage.listdir(f"{workdir}/checkpoints/main")

    outs = _run(workdir, 2, run)
    assert f"restored checkpoint at step {stopped[0]}" in outs[0]
    assert all("RESULT finished 8" in o for o in outs)
    assert {s: r["loss"] for s, r in _rows(workdir).items()} == {s: r["loss"] for s, r in ref.items()}  # bit for bit
    assert _data_state(workdir, 8) == _data_state(ref_dir, 8)

    # Export straight from the bucket; transformers loads it and computes our logits.
    out = tmp_path / "hf"
    proc = cli.run("-m", "glm_jax.convert", "to-hf", f"--workdir={workdir}", f"--out={out}", "--dtype=float32",
                   timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import torch
    from transformers import AutoModelForCausalLM

    from glm_jax.model import forward
    from glm_jax.train import checkpoint

    params, cfg = checkpoint.restore_params(workdir)
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (1, 16))
    ours = np.asarray(forward(params, tokens, cfg.model))
    hf = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_resume_on_other_process_counts_sees_every_example_once(reference, gcs_bucket):
    """2 processes train steps 1-4, 1 process 5-6, 2 processes again 7-8 (fewer hosts, then more):
    each row stream ends every leg in exactly the state of the straight run (every example consumed
    once, none skipped), the losses follow the straight run's (other meshes: float reassociation
    only) and Adam's moments came along."""
    ref_dir, ref = reference
    workdir = f"{gcs_bucket}/elastic"
    for n, mesh, steps in ((2, TWO, 4), (1, ONE, 6), (2, TWO, 8)):
        outs = _run(workdir, n, [*SMALL, *mesh, f"train.steps={steps}"])
        assert f"RESULT finished {steps}" in outs[0]
        if steps > 4:
            assert f"restored checkpoint at step {steps - 2}" in outs[0]
        assert _data_state(workdir, steps) == _data_state(ref_dir, steps)
    rows = _rows(workdir)
    assert sorted(rows) == list(range(1, 9))
    for step in range(1, 9):
        assert rows[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5), step
        assert rows[step]["grad_norm"] == pytest.approx(ref[step]["grad_norm"], rel=1e-4), step


def test_one_row_shared_by_two_processes_trains_like_one_process(gcs_bucket):
    """Global batch 1 on 2 processes: both read the row and feed their devices' slices of it,
    whether the sequence axis (each host a different half of the row) or the tensor axis (both
    hosts the whole row) spans the hosts."""
    run = [*SMALL, "train.batch_size=1", "train.steps=3", "checkpoint.every_steps=3"]
    one = f"{gcs_bucket}/one"
    _run(one, 1, [*run, "mesh.fsdp=1", "mesh.sequence=4", "mesh.tensor=2"], devices=8)
    a = _rows(one)
    from glm_jax.train import checkpoint

    pa, _ = checkpoint.restore_params(one)
    for name, mesh in (("sequence", ["mesh.fsdp=1", "mesh.sequence=4", "mesh.tensor=2"]),
                       ("tensor", ["mesh.fsdp=1", "mesh.tensor=8"])):
        two = f"{gcs_bucket}/two_{name}"
        _run(two, 2, [*run, *mesh])
        b = _rows(two)
        assert sorted(a) == sorted(b) == [1, 2, 3], name
        for step in a:
            assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), (name, step)
            assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-5), (name, step)
        assert [f for f in storage.listdir(f"{two}/checkpoints/main/3/data") if f.startswith("row_")] == ["row_0.json"]
        pb, _ = checkpoint.restore_params(two)
        import jax

        jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6),
                     pa, pb)
