"""Passkey evaluation builds exact prompts and scores them deterministically."""

import json

import jax
import numpy as np
import pytest

from glm_jax import model
from glm_jax.config import RunConfig
from glm_jax.data.tokenizer import bundled_tokenizer
from glm_jax.eval import passkey
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def tok():
    return bundled_tokenizer()


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_example_has_length_needle_at_depth_and_answer_at_end(tok, depth):
    ids, answer_start = passkey.make_example(tok, 512, depth, 48213)
    assert ids.shape == (512,) and ids[0] == tok.special_id("[gMASK]") and ids[1] == tok.special_id("<sop>")
    text = tok.decode(ids.tolist()[2:])
    assert text.endswith("What is the pass key? The pass key is 48213")
    assert tok.decode(ids[answer_start:].tolist()) == "48213"
    where = text.index("The pass key is 48213. Remember it.")
    body = len(text) - len(passkey.QUESTION) - 5
    assert abs(where / body - depth) < 0.1


def test_too_short_length_is_refused(tok):
    with pytest.raises(ValueError, match="too short"):
        passkey.make_example(tok, 16, 0.5, 12345)


def test_training_texts_fit_their_length_and_end_in_their_own_key(tok):
    texts = passkey.training_texts(tok, 20, 100, 300, seed=3)
    assert texts == passkey.training_texts(tok, 20, 100, 300, seed=3)
    for text in texts:
        assert 95 <= len(tok.encode(text)) <= 305  # re-tokenizing the decoded text may merge a few tokens
        key = text.rsplit("The pass key is ", 1)[1]
        assert key.isdigit() and f"The pass key is {key}. Remember it. {key} is the pass key." in text
    eval_keys = {str(k) for k in np.random.default_rng(0).integers(10_000, 100_000, 4)}
    assert not eval_keys & {t.rsplit(" ", 1)[1] for t in texts}


def test_scores_are_deterministic_and_accuracy_tracks_greedy(tok, tmp_path):
    cfg = tiny_model(vocab_size=4096)
    params = model.init_params(cfg, jax.random.key(0))
    a = passkey.evaluate(params, cfg, tok, [256, 512], depths=3, samples=2)
    b = passkey.evaluate(params, cfg, tok, [256, 512], depths=3, samples=2)
    assert a == b and len(a["results"]) == 6
    assert all(r["logprob"] < 0 and r["accuracy"] in (0.0, 0.5, 1.0) for r in a["results"])
    # "correct" is exactly "every answer token is the argmax" (greedy retrieval of the answer).
    ids, start = passkey.make_example(tok, 256, 0.5, 11111)
    logp, correct = passkey._score(params, jax.numpy.asarray(ids[None]), cfg, RunConfig(), start)
    argmax = np.asarray(model.forward(params, jax.numpy.asarray(ids[None]), cfg))[0, start - 1:-1].argmax(-1)
    assert bool(correct[0]) == bool((argmax == ids[start:]).all())
    passkey.save(a, str(tmp_path / "p.json"), str(tmp_path / "p.png"))
    assert json.load(open(tmp_path / "p.json")) == a and (tmp_path / "p.png").stat().st_size > 1000
