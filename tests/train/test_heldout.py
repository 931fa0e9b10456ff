"""Held-out loss while training, through `python -m glm_jax.train --config.eval.every_steps=N` on the
bundled mixture: the same numbers on every mesh and host count, training unchanged by it, a
SIGTERM during an evaluation loses nothing, and the debug model's held-out loss falls."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from glm_jax import config
from glm_jax.config import ConfigError
from tests import cli
from tests.conftest import REPO

FLAGS = ["--config=configs/debug.py", "--config.model.num_layers=2", "--config.train.seq_len=64",
         "--config.train.steps=4", "--config.train.warmup_steps=1", "--config.train.log_every=1",
         "--config.checkpoint.every_steps=2", "--config.eval.batches=1", "--config.data.mixture=bundled_zh_en"]
EVAL = ["--config.eval.every_steps=2"]
FSDP8, FSDP4_TP2 = ["--config.mesh.fsdp=8"], ["--config.mesh.fsdp=4", "--config.mesh.tensor=2"]

pytestmark = pytest.mark.slow


def _train(workdir, *flags):
    return cli.run("-m", "glm_jax.train", *FLAGS, *flags, f"--workdir={workdir}", timeout=900).stdout


def _rows(workdir) -> dict[int, dict]:
    d = os.path.join(workdir, "metrics")
    return {r["step"]: r for f in sorted(os.listdir(d)) for r in map(json.loads, open(os.path.join(d, f)))}


def _heldout(rows) -> dict[tuple[int, str], float]:
    return {(s, k): v for s, r in rows.items() for k, v in r.items() if k.startswith("eval/")}


def _train_losses(rows) -> dict[int, float]:
    return {s: r["loss"] for s, r in rows.items()}


@pytest.fixture(scope="module")
def fsdp8(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("heldout") / "fsdp8")
    out = _train(workdir, *FSDP8, *EVAL)
    return workdir, out


def test_held_out_loss_is_logged_and_falls_with_training(fsdp8):
    workdir, out = fsdp8
    rows = _rows(workdir)
    tasks = ("bundled_zh", "bundled_en", "bundled_code")
    for step in (2, 4):  # every 2 steps, the stage's last included
        for task in tasks:
            loss = rows[step][f"eval/{task}/loss"]
            assert np.isclose(rows[step][f"eval/{task}/perplexity"], np.exp(loss), rtol=1e-6)
        line = next(x for x in out.splitlines() if f"step {step}/4" in x)
        assert f"held-out loss bundled_code {rows[step]['eval/bundled_code/loss']:.4f}" in line
    assert not any(k.startswith("eval/") for k in rows[1] | rows[3])
    for task in tasks:
        assert rows[4][f"eval/{task}/loss"] < rows[2][f"eval/{task}/loss"], task
    tb = os.path.join(workdir, "tb")
    assert any(f.startswith("events") for _, _, files in os.walk(tb) for f in files)


def test_held_out_loss_is_the_same_on_another_mesh_and_training_is_unchanged_by_it(fsdp8, tmp_path):
    workdir, _ = fsdp8
    want = _rows(workdir)
    _train(str(tmp_path / "tp"), *FSDP4_TP2, *EVAL)
    got, ref = _heldout(_rows(str(tmp_path / "tp"))), _heldout(want)
    assert sorted(got) == sorted(ref) and len(ref) == 2 * 3 * 2  # 2 evaluations x 3 tasks x loss, perplexity
    np.testing.assert_allclose([got[k] for k in sorted(ref)], [ref[k] for k in sorted(ref)], rtol=1e-5)
    _train(str(tmp_path / "off"), *FSDP8)
    off = _rows(str(tmp_path / "off"))
    assert not _heldout(off)
    assert _train_losses(off) == _train_losses(want)  # bit for bit


def test_held_out_loss_is_the_same_on_two_processes(fsdp8, tmp_path):
    workdir, _ = fsdp8
    port = cli.free_port()
    two = str(tmp_path / "two")
    procs = [subprocess.Popen([sys.executable, "-m", "glm_jax.train", *FLAGS, *FSDP8, *EVAL, f"--workdir={two}",
                               "--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}"], env=cli.env(devices=4), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    got, ref = _heldout(_rows(two)), _heldout(_rows(workdir))
    assert sorted(got) == sorted(ref)
    np.testing.assert_allclose([got[k] for k in sorted(ref)], [ref[k] for k in sorted(ref)], rtol=1e-5)


def test_sigterm_during_an_evaluation_loses_nothing(fsdp8, tmp_path):
    workdir, _ = fsdp8
    resumed = str(tmp_path / "resumed")
    cmd = ["-m", "glm_jax.train", *FLAGS, *FSDP8, *EVAL, f"--workdir={resumed}"]
    out = cli.sigterm_on("evaluating held-out data at step 2", *cmd)
    assert "preempted at step 2" in out
    again = cli.run(*cmd, timeout=900, check=False)
    assert again.returncode == 0 and "restored checkpoint at step 2" in again.stdout, again.stdout[-3000:]
    want, got = _rows(workdir), _rows(resumed)
    assert _train_losses(got) == _train_losses(want)  # bit for bit
    assert _heldout(got).keys() == _heldout(want).keys()  # the interrupted evaluation's row was kept


def test_a_task_without_held_out_data_is_refused_naming_it(tmp_path):
    from glm_jax.data import tasks
    from glm_jax.train import validation

    doc = tmp_path / "docs.jsonl"
    doc.write_text(json.dumps({"text": "a document"}) + "\n")
    tasks.register_text_task("test_no_heldout", str(doc))
    cfg = config.load(os.path.join(REPO, "configs", "debug.py"),
                      ["eval.every_steps=10", "eval.mixture='test_no_heldout'", "mesh.fsdp=8"])
    with pytest.raises(ConfigError, match=r"`eval.mixture`: task 'test_no_heldout' .* has no held-out data"):
        validation.check_stages([("main", cfg)], num_devices=8, num_processes=1)
    unknown = config.load(os.path.join(REPO, "configs", "debug.py"), ["eval.every_steps=10", "eval.mixture='nope'"])
    with pytest.raises(ConfigError, match=r"`eval.mixture`: unknown task or mixture 'nope'"):
        validation.check_stages([("main", unknown)], num_devices=8, num_processes=1)
