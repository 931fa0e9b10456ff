"""seqio evaluation: a T5X user's task (tests/eval/seqio_user_task.py, seqio's API only) evaluates
through `python -m glm_jax.eval seqio` and while training, with the same values, equal to a hand
computation over the same scores and predictions; bad tasks are named before anything runs."""

import json
import os

import numpy as np
import pytest

from tests import cli

USER = "tests.eval.seqio_user_task"
CONFIG = f"""import runpy
import {USER}  # registers user_qa, as a user's config file would
get_config = runpy.run_path("configs/debug.py")["get_config"]
"""
TRAIN = ["--config.train.steps=2", "--config.train.seq_len=128", "--config.train.lr=1e-6",
         "--config.train.warmup_steps=0", "--config.eval.every_steps=2", "--config.eval.batches=1",
         "--config.eval.seqio_tasks=user_qa", "--config.checkpoint.async_save=False"]


@pytest.fixture(scope="module")
def trained(sharp_checkpoint, tmp_path_factory):
    """(workdir, its metrics row of step 2) of 2 steps from the sharp checkpoint, evaluating user_qa."""
    tmp = tmp_path_factory.mktemp("seqio")
    config, workdir = tmp / "user_config.py", tmp / "run"
    config.write_text(CONFIG)
    cli.run("-m", "glm_jax.train", f"--config={config}", f"--workdir={workdir}",
            f"--config.train.init_from={sharp_checkpoint}", *TRAIN)
    rows = [json.loads(line) for f in sorted((workdir / "metrics").glob("*.jsonl")) for line in open(f)]
    return workdir, next(r for r in rows if r["step"] == 2)


def _by_hand(workdir):
    """user_qa's metrics from scores and greedy predictions computed here, one unpacked row per
    example through the full forward pass (no packing, no KV cache)."""
    import jax
    import jax.numpy as jnp

    from glm_jax import model
    from glm_jax.data.tokenizer import END_TOKENS
    from glm_jax.train.checkpoint import restore_params
    from tests.eval import seqio_user_task as user

    params, cfg = restore_params(str(workdir))
    vocab = user.VOCAB
    end = [vocab.special_id(t) for t in END_TOKENS]
    forward = jax.jit(lambda p, ids: jax.nn.log_softmax(
        model.logits_from_hidden(p, model.hidden_states(p, ids, cfg.model, cfg.run))[0].astype(jnp.float32)))

    def logprobs(ids):  # causal: padding after the ids changes none of their positions (one compile)
        return np.asarray(forward(params, jnp.asarray([ids + [0] * (64 - len(ids))])))[:len(ids)]

    scores, predictions = [], []
    longest = max(len(vocab.encode(a)) + 1 for _, a in user.QA)
    for question, answer in user.QA:
        context, target = vocab.encode(question), vocab.encode(answer) + [vocab.eos_id]
        lp = logprobs(context + target)
        scores.append(sum(lp[len(context) - 1 + k, t] for k, t in enumerate(target)))
        ids = list(context)
        while len(ids) - len(context) < longest:
            ids.append(int(logprobs(ids)[-1].argmax()))
            if ids[-1] in end:
                ids.pop()
                break
        predictions.append(vocab.decode(ids[len(context):]))
    return {**user.mean_logprob(None, scores), **user.match([a for _, a in user.QA], predictions)}


@pytest.mark.slow
def test_a_users_task_evaluates_while_training_and_through_the_cli_as_by_hand(trained, tmp_path):
    workdir, row = trained
    logged = {k.split("/")[-1]: v for k, v in row.items() if k.startswith("eval/user_qa/")}
    assert set(logged) == {"mean_logprob", "exact_match", "chars"}, row
    assert "eval/bundled_zh/loss" in row  # the held-out loss is still there beside it
    out = tmp_path / "seqio.json"
    proc = cli.run("-m", "glm_jax.eval", "seqio", f"--workdir={workdir}", "--tasks=user_qa",
                   f"--module_import={USER}", f"--out={out}")
    result = json.loads(out.read_text())
    assert result["step"] == 2 and result["split"] == "validation"
    assert "user_qa" in proc.stdout and "mean_logprob" in proc.stdout
    got = result["metrics"]["user_qa"]
    hand = _by_hand(workdir)
    for name, value in hand.items():  # the CLI reads the checkpoint training evaluated at step 2
        assert got[name] == pytest.approx(logged[name], rel=1e-5, abs=1e-5), name
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-4), (name, got, hand)
    assert hand["chars"] > 0  # the model said something: predictions were compared, not two empty lists


@pytest.mark.slow
def test_bundled_tasks_report_their_metrics(sharp_checkpoint, tmp_path):
    out = tmp_path / "bundled.json"
    cli.run("-m", "glm_jax.eval", "seqio", f"--workdir={sharp_checkpoint}", "--tasks=bundled_mc,bundled_arith",
            "--num_examples=8", f"--out={out}")
    result = json.loads(out.read_text())
    assert result["step"] is None  # a params-only checkpoint
    assert result["examples"] == {"bundled_mc": 8, "bundled_arith": 8}  # 2 questions x 4 options; 8 problems
    assert 0 <= result["metrics"]["bundled_mc"]["accuracy"] <= 1
    assert 0 <= result["metrics"]["bundled_arith"]["exact_match"] <= 1


def test_metric_fns_of_the_bundled_tasks():
    from glm_jax.data import eval_tasks

    targets = [(0, False), (0, True), (1, True), (1, False)]
    assert eval_tasks.rank_accuracy(targets, [0.1, 0.5, -2.0, -1.0]) == {"accuracy": 0.5}
    assert eval_tasks.final_number("so 1,234 + 1 = 1,235.\n#### 1,235.") == "1235"
    assert eval_tasks.final_number("no answer") == ""
    assert eval_tasks.exact_match(["3", "4"], ["3", "5"]) == {"exact_match": 0.5}


@pytest.mark.parametrize("args, named", [
    (["--tasks=no_such_task"], "'no_such_task'"),
    (["--tasks=user_qa_unscored", f"--module_import={USER}"], "'user_qa_unscored' has no metric_fns"),
    (["--tasks=user_qa", f"--module_import={USER}", "--split=test"], "no split 'test'"),
    (["--tasks=user_qa", "--module_import=no_such_module"], "'no_such_module'"),
    (["--tasks=long_passkey_1024"], "task 'long_passkey_1024' example 0: its inputs are"),  # the model has 512
])
def test_cli_names_a_task_it_cannot_evaluate_before_reading_weights(sharp_checkpoint, tmp_path, args, named):
    out = tmp_path / "never.json"
    proc = cli.run("-m", "glm_jax.eval", "seqio", f"--workdir={sharp_checkpoint}", *args, f"--out={out}",
                   check=False)
    assert proc.returncode == 2 and named in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


def test_training_names_an_unknown_seqio_task_before_it_trains(tmp_path):
    proc = cli.run("-m", "glm_jax.train", "--config=configs/debug.py", f"--workdir={tmp_path / 'run'}",
                   "--config.eval.every_steps=2", "--config.eval.seqio_tasks=no_such_task", check=False)
    assert proc.returncode != 0 and "eval.seqio_tasks" in proc.stderr and "'no_such_task'" in proc.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
