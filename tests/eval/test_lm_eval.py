"""`python -m glm_jax.eval lm-eval`: our lm-eval model scores and generates exactly like lm-eval's
own `hf` backend on the same exported weights, and refuses requests it cannot serve by name."""

import gzip
import json
import os

import numpy as np
import pytest

from tests.conftest import REPO
from tests.eval.conftest import finish, results, samples, start

TASKS_DIR = os.path.join(REPO, "data", "eval", "tasks")
COMMON = ["--tasks", "bundled_mc,bundled_arith", "--num_fewshot", "1", "--limit", "10", "--gen_kwargs",
          "max_gen_toks=24", "--log_samples"]


@pytest.mark.slow
def test_cli_matches_lm_eval_hf_backend(debug_model, tmp_path):
    ckpt, hf = debug_model
    ours = start("-m", "glm_jax.eval", "lm-eval", "--model_args", f"hf={hf},fsdp=4,tensor=2", "--batch_size", "8",
                 "--output_path", str(tmp_path / "ours"), *COMMON)
    theirs = start("-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={hf},dtype=float32",
                   "--device", "cpu", "--include_path", TASKS_DIR, "--output_path", str(tmp_path / "hf"), *COMMON)
    finish(ours)
    finish(theirs)
    a, b = samples(str(tmp_path / "ours"), "bundled_mc"), samples(str(tmp_path / "hf"), "bundled_mc")
    assert [r["doc_id"] for r in a] == [r["doc_id"] for r in b] == list(range(10))
    ll = lambda rows: np.array([[float(c[0][0]) for c in r["resps"]] for r in rows])
    flags = lambda rows: [[c[0][1] for c in r["resps"]] for r in rows]
    assert a[0]["arguments"] == b[0]["arguments"]  # the same requests
    np.testing.assert_allclose(ll(a), ll(b), atol=1e-4, rtol=0)
    assert flags(a) == flags(b)
    ra, rb = results(str(tmp_path / "ours")), results(str(tmp_path / "hf"))
    assert ra["bundled_mc"]["acc,none"] == rb["bundled_mc"]["acc,none"]
    ga, gb = samples(str(tmp_path / "ours"), "bundled_arith"), samples(str(tmp_path / "hf"), "bundled_arith")
    texts = [r["resps"][0][0] for r in ga]  # a record per doc and filter (strict-match, flexible-extract)
    assert texts == [r["resps"][0][0] for r in gb] and {r["doc_id"] for r in ga} == set(range(10)) and any(texts)
    assert ra["bundled_arith"] == rb["bundled_arith"]


def _instances(kind, args, task="t"):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i, (task, i, 1)) for i, a in enumerate(args)]


@pytest.mark.slow
def test_greedy_flags_empty_context_and_rolling_windows_match_hf(debug_model):
    """Continuations the model would produce (is_greedy true), an empty context (lm-eval's prefix
    token) and a text longer than the model's 512 tokens (rolling windows), in-process."""
    from lm_eval.models.huggingface import HFLM

    from glm_jax.eval.harness import GLMJaxLM

    _, hf = debug_model
    ours = GLMJaxLM.create_from_arg_string(f"hf={hf}", {"batch_size": 8})
    theirs = HFLM(pretrained=hf, dtype="float32", device="cpu", batch_size=1)
    prompts = ["The Python interpreter", "床前明月光，", "def f(x):\n    return", "Debian 的软件包"]
    gen = ours.generate_until(_instances("generate_until", [(p, {"until": ["\n\n\n"], "max_gen_toks": 6})
                                                            for p in prompts]))
    pairs = [(p, g[:k]) for p, g in zip(prompts, gen) for k in (1, len(g)) if g[:k].strip()]
    pairs += [(p, " zebra quantum 海") for p in prompts] + [("", "The Python interpreter")]
    reqs = _instances("loglikelihood", pairs)
    mine, want = ours.loglikelihood(reqs), theirs.loglikelihood(reqs)
    np.testing.assert_allclose([m[0] for m in mine], [w[0] for w in want], atol=1e-4, rtol=0)
    assert [m[1] for m in mine] == [w[1] for w in want] and any(m[1] for m in mine)
    with gzip.open(os.path.join(REPO, "data", "corpus", "en.jsonl.gz"), "rt") as f:
        text = json.loads(f.readline())["text"][:6000]
    assert len(ours.tok_encode(text)) > 2 * ours.max_length  # three windows at least
    rolling = _instances("loglikelihood_rolling", [(text,), ("short text",)])
    np.testing.assert_allclose(ours.loglikelihood_rolling(rolling), theirs.loglikelihood_rolling(rolling),
                               atol=1e-3, rtol=0)


NO_STOP_TASK = """task: no_stop_strings
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  max_gen_toks: 8
metric_list:
  - metric: exact_match
"""


@pytest.mark.slow
def test_requests_it_cannot_serve_are_named_and_nothing_runs(debug_model, tmp_path):
    ckpt, _ = debug_model
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "no_stop.yaml").write_text(NO_STOP_TASK.format(data=os.path.join(REPO, "data", "eval", "arith_test.jsonl")))
    model = ["--model_args", f"workdir={ckpt}", "--limit", "4"]
    no_stop = start("-m", "glm_jax.eval", "lm-eval", *model, "--tasks", "no_stop_strings", "--include_path", str(tasks),
                    "--output_path", str(tmp_path / "a"))
    too_long = start("-m", "glm_jax.eval", "lm-eval", *model, "--tasks", "bundled_arith", "--gen_kwargs",
                     "max_gen_toks=500", "--output_path", str(tmp_path / "b"))
    _, err = finish(no_stop, ok=False)
    assert no_stop.returncode == 2, err[-3000:]
    assert "generate_until request" in err and "'no_stop_strings'" in err and "`until`" in err
    _, err = finish(too_long, ok=False)
    assert too_long.returncode == 2, err[-3000:]
    assert "generate_until request" in err and "'bundled_arith'" in err and "max_gen_toks=500" in err and "512" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_chat_template_tokenizes_like_training_chat_format(debug_model):
    """--apply_chat_template's text becomes exactly the ids glm_jax.data.chat renders (and what
    `python -m glm_jax.generate --chat` prompts with)."""
    from glm_jax.data import chat
    from glm_jax.eval.harness import GLMJaxLM
    from glm_jax.generate import prompt_ids

    ckpt, _ = debug_model
    lm = GLMJaxLM(workdir=ckpt)
    turns = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "What is 2 + 3?"},
             {"role": "assistant", "content": "5"}]
    ids, _ = chat.render({"messages": turns}, lm.vocab)
    assert lm.tok_encode(lm.apply_chat_template(turns, add_generation_prompt=False)) + [lm.eot_token_id] == ids.tolist()
    user = [{"role": "user", "content": "床前明月光"}]
    assert lm.tok_encode(lm.apply_chat_template(user)) == prompt_ids(lm.vocab, "床前明月光", chat=True)
