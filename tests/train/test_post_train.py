"""configs/post_train.py through the real `python -m glm_jax.train` on the bundled data: SFT, then
DPO against the SFT result.

Must-show 3: a few hundred DPO steps raise held-out preference accuracy (bundled_prefs_heldout,
pairs never trained on) far above its value at the start of DPO, while the reference params are
bit-identical before and after; the plan's own held-out evaluation logs the same figures. Must-show 4: SIGTERM mid-DPO, then the same command again, gives
per-step metrics equal to the uninterrupted run, bit for bit.

The model is the debug plan shrunk (2 layers, hidden 64; the bundled tokenizer's 4,096 ids) on one
CPU device, so a few hundred steps fit in CI."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from glm_jax import config
from glm_jax.data import loader
from glm_jax.train import checkpoint, dpo, loop, metrics
from tests import cli
from tests.conftest import REPO

SFT_STEPS, DPO_STEPS = 10, 200
TINY = ["--config.model.num_layers=2", "--config.model.hidden_size=64", "--config.model.num_heads=4",
        "--config.model.head_dim=16", "--config.model.ffn_hidden_size=128", "--config.mesh.fsdp=1",
        "--config.train.loss_chunk=128", "--config.train.log_every=10", "--config.checkpoint.every_steps=1000",
        f"--config.stages.sft.train.steps={SFT_STEPS}", "--config.stages.sft.train.batch_size=2",
        "--config.stages.dpo.train.batch_size=1", "--config.stages.dpo.train.lr=1e-4"]
PLAN = "configs/post_train.py:model=debug"


def _cmd(workdir, dpo_steps=DPO_STEPS):
    return [sys.executable, "-m", "glm_jax.train", f"--config={PLAN}", f"--workdir={workdir}", *TINY,
            f"--config.stages.dpo.train.steps={dpo_steps}"]


def _popen(cmd, data_cache):
    return subprocess.Popen(cmd, env=cli.env(devices=1, GLM_JAX_DATA_CACHE=data_cache), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_cache):
    """The uninterrupted run; the reference (SFT's last params) read as DPO begins and again at the end."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    proc = _popen(_cmd(workdir), data_cache)
    out, ref_at_start = [], None
    for line in proc.stdout:
        out.append(line)
        if "[dpo] DPO reference: stage 'sft'" in line:  # DPO starts now: the reference as it is
            ref_at_start = jax.device_get(checkpoint.restore_params(workdir, step=SFT_STEPS)[0])
    assert proc.wait(timeout=900) == 0, "".join(out)[-3000:]
    assert ref_at_start is not None, "".join(out)[-3000:]
    return workdir, ref_at_start, "".join(out)


def _heldout(workdir, data_cache):
    """The DPO stage's config on the held-out pairs, and those pairs packed into rows."""
    cfg = dict(checkpoint.read_stages(workdir))["dpo"]
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mixture="bundled_prefs_heldout",
                                                            cache_dir=data_cache))
    return cfg, loader.epoch_rows(cfg)


@pytest.mark.slow
def test_dpo_after_sft_raises_heldout_preference_accuracy_with_a_frozen_reference(straight, data_cache):
    workdir, ref_at_start, out = straight
    end = SFT_STEPS + DPO_STEPS
    assert f"[dpo] starting from stage 'sft' step {SFT_STEPS}" in out and f"finished at step {end}" in out
    sft, _ = checkpoint.restore_params(workdir, step=SFT_STEPS)
    policy, _ = checkpoint.restore_params(workdir, step=end)
    # The reference is SFT's last checkpoint, bit for bit the same before and after DPO.
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), sft, ref_at_start)
    cfg, rows = _heldout(workdir, data_cache)
    start = dpo.evaluate(sft, sft, rows, cfg)  # the start of DPO: policy = reference = SFT
    after = dpo.evaluate(policy, sft, rows, cfg)
    print(f"\nheld-out ({int(after['pairs'])} pairs) at DPO start: {json.dumps(start)}\nafter {DPO_STEPS} DPO steps: "
          f"{json.dumps(after)}")
    assert after["pairs"] == 12
    assert start["preference_accuracy"] == 0.0 and start["reward_margin"] == 0.0  # every reward is 0 (ties)
    assert after["preference_accuracy"] >= 0.75  # clearly above the start and above chance (0.5)
    assert after["reward_margin"] > 0 and after["loss"] < start["loss"]
    assert after["policy_accuracy"] > start["policy_accuracy"]  # the policy itself now prefers the chosen answers
    rows = metrics.read_rows(workdir)
    dpo_rows = [r for r in rows if r["stage"] == "dpo"]
    assert len(dpo_rows) == DPO_STEPS and dpo_rows[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-6)
    # The plan evaluates each stage on its mixture's held-out split while it trains: SFT by loss at
    # its last step, DPO every 50 steps and at its last, where it equals the evaluation above (the
    # same 12 held-out pairs: bundled_prefs' validation split is bundled_prefs_heldout).
    evaluated = {r["step"]: {k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")} for r in rows}
    evaluated = {step: e for step, e in evaluated.items() if e}
    assert sorted(evaluated) == [SFT_STEPS, 50, 100, 150, 200, end]
    assert sorted(evaluated[SFT_STEPS]) == ["bundled_chat_sft/loss", "bundled_chat_sft/perplexity"]
    assert evaluated[end]["bundled_prefs/preference_accuracy"] == after["preference_accuracy"]
    assert evaluated[end]["bundled_prefs/loss"] == pytest.approx(after["loss"], rel=1e-5)
    assert evaluated[50]["bundled_prefs/loss"] > evaluated[end]["bundled_prefs/loss"]


@pytest.mark.slow
def test_eval_dpo_cli_scores_held_out_pairs_against_the_stage_reference(straight, data_cache, tmp_path):
    workdir, _, _ = straight
    env = cli.env(devices=1, GLM_JAX_DATA_CACHE=data_cache)
    out = tmp_path / "dpo.json"
    proc = cli.run("-m", "glm_jax.eval", "dpo", f"--workdir={workdir}", "--mixture=bundled_prefs_heldout",
                   f"--out={out}", env=env)
    got = json.loads(out.read_text())
    assert got["step"] == SFT_STEPS + DPO_STEPS  # the latest checkpoint
    assert got["reference"] == {"checkpoint": workdir, "step": SFT_STEPS}  # SFT's last checkpoint, as in training
    sft, _ = checkpoint.restore_params(workdir, step=SFT_STEPS)
    policy, _ = checkpoint.restore_params(workdir)
    cfg, rows = _heldout(workdir, data_cache)
    want = dpo.evaluate(policy, sft, rows, cfg)
    assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-6)
    printed = dict(line.split() for line in proc.stdout.splitlines()[:-1])
    assert float(printed["preference_accuracy"]) == pytest.approx(want["preference_accuracy"], abs=1e-4)
    # Bad input is named before any weights are read: an SFT checkpoint, a mixture of no pairs.
    sft_step = cli.run("-m", "glm_jax.eval", "dpo", f"--workdir={workdir}", f"--step={SFT_STEPS}",
                       "--mixture=bundled_prefs_heldout", env=env, check=False)
    assert sft_step.returncode == 2 and "is not a DPO stage's checkpoint" in sft_step.stderr, sft_step.stderr[-2000:]
    chat = cli.run("-m", "glm_jax.eval", "dpo", f"--workdir={workdir}", "--mixture=bundled_chat_sft", env=env,
                   check=False)
    assert chat.returncode == 2 and "--mixture 'bundled_chat_sft'" in chat.stderr, chat.stderr[-2000:]
    assert "preference" in chat.stderr and not os.path.exists(os.path.join(workdir, "eval"))


@pytest.mark.slow
def test_sigterm_mid_dpo_then_the_same_command_resumes_bit_identically(straight, data_cache, tmp_path):
    """The interrupted run starts from the straight run's SFT stage (copied: the same checkpoint) and
    stops its DPO stage after 40 steps (train.steps is resumable; the DPO schedule is constant
    after warmup, so its steps are the straight run's first: the lr column is compared too)."""
    workdir, _, _ = straight
    short = SFT_STEPS + 40
    shutil.copytree(os.path.join(workdir, "checkpoints", "sft"), tmp_path / "checkpoints" / "sft")
    shutil.copy(os.path.join(workdir, "config.json"), tmp_path / "config.json")
    proc = _popen(_cmd(tmp_path, dpo_steps=40), data_cache)
    out = []
    for line in proc.stdout:
        out.append(line)
        if f"[dpo] step {SFT_STEPS + 20}/{short}" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out += proc.stdout.readlines()
    assert proc.wait(timeout=600) == 0, "".join(out)[-3000:]
    assert "[sft] finished earlier" in "".join(out) and "[dpo] preempted at step" in "".join(out), "".join(out)[-3000:]
    again = subprocess.run(_cmd(tmp_path, dpo_steps=40), env=cli.env(devices=1, GLM_JAX_DATA_CACHE=data_cache),
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[dpo] restored checkpoint at step" in again.stdout, again.stdout[-3000:]
    keys = ("loss", "lr", "grad_norm", "rewards_chosen", "rewards_rejected", "preference_accuracy")
    want = {r["step"]: [r[k] for k in keys] for r in metrics.read_rows(workdir) if SFT_STEPS < r["step"] <= short}
    got = {r["step"]: [r[k] for k in keys] for r in metrics.read_rows(str(tmp_path))}
    assert sorted(got) == list(range(SFT_STEPS + 1, short + 1))
    assert got == want  # bit for bit: model, optimizer, data order and the reference


def test_plans_resolve_and_fit_8_devices():
    for model in ("debug", "glm4_9b_chat", "glm4_9b_0414"):
        stages = config.resolve_stages(config.load_config_dict(f"{REPO}/configs/post_train.py:model={model}"))
        (sft_name, sft), (dpo_name, d) = stages
        assert (sft_name, sft.train.objective, dpo_name, d.train.objective) == ("sft", "lm", "dpo", "dpo")
        assert d.dpo.reference == "" and d.train.optimizer_state == "reset" and d.train.lr < sft.train.lr
        assert sft.data.mixture == "bundled_chat_sft" and d.data.mixture == "bundled_prefs"
    eight = ["mesh.fsdp=2", "mesh.tensor=4"]  # the debug plan's 2-row DPO batches on 8 devices (README)
    loop.validate(config.resolve_stages(config.apply_overrides(config.load_config_dict(f"{REPO}/{PLAN}"), eight)))


def test_a_dpo_stage_without_a_reference_is_refused_before_anything_runs(tmp_path):
    cd = config.apply_overrides(config.load_config_dict(f"{REPO}/{PLAN}"), ["mesh.fsdp=2", "mesh.tensor=4"])
    cd.stage_order = ("dpo",)
    del cd.stages["sft"]
    with pytest.raises(config.ConfigError, match=r"dpo.reference.*needs a reference policy"):
        loop.run(cd, str(tmp_path / "w"), make_iterator=None)
    cd = config.apply_overrides(config.load_config_dict(f"{REPO}/{PLAN}"), ["mesh.fsdp=2", "mesh.tensor=4"])
    cd.stages["dpo"]["dpo"]["reference"] = str(tmp_path / "nowhere")
    with pytest.raises(config.ConfigError, match=r"stages.dpo.dpo.reference.*nowhere"):
        loop.run(cd, str(tmp_path / "w"), make_iterator=None)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
