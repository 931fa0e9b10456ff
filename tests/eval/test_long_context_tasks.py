"""The long-context sets (glm_jax/eval/long_context_tasks.py): examples of the asked length whose
answer is in the text, deterministic, registered as seqio tasks the seqio evaluation accepts."""

import re

import pytest

from glm_jax.data.tokenizer import bundled_tokenizer
from glm_jax.eval import long_context_tasks as lc


@pytest.mark.parametrize("kind", lc.KINDS)
@pytest.mark.parametrize("length", [512, 2048])
def test_examples_have_the_length_and_hold_their_answer(kind, length):
    tok = bundled_tokenizer()
    for i in range(3):
        ex = lc.example(kind, length, i)
        assert abs(len(tok.encode(ex["inputs"] + ex["targets"])) - length) <= 8
        text, answer = ex["inputs"], ex["targets"].strip()
        if kind == "passkey":
            assert text.count(f"The pass key is {answer}.") == 1
        elif kind == "multikey":
            word = re.search(r"magic number for (\w+)\?", text).group(1)
            assert f"The special magic number for {word} is {answer}." in text
            assert len(re.findall(r"The special magic number for \w+ is \d+\.", text)) == 4
        else:
            value = re.search(r"hold the value (\d+)\?", text).group(1)
            names = answer.split()
            chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
            positions = [text.index(c) for c in chain]
            assert positions == sorted(positions)  # assigned in the order the answer lists them
    assert lc.example(kind, length, 1) == lc.example(kind, length, 1)
    assert lc.example(kind, length, 1) != lc.example(kind, length, 2)


def test_a_length_too_short_for_the_prompt_is_named():
    with pytest.raises(ValueError, match="long_vartrack_64: 64 tokens"):
        lc.example("vartrack", 64, 0)


def test_registered_tasks_serve_their_examples_and_pass_the_evaluations_checks():
    import seqio

    from glm_jax.eval import seqio_eval

    names = lc.register(768)
    assert names == ["long_passkey_768", "long_multikey_768", "long_vartrack_768"]
    tasks = seqio_eval.resolve(",".join(names), "validation", vocab_size=4096)
    ds = list(seqio.get_mixture_or_task("long_multikey_768").get_dataset(None, "validation", shuffle=False)
              .as_numpy_iterator())
    assert len(tasks) == 3 and len(ds) == lc.EXAMPLES
    vocab = bundled_tokenizer()
    assert vocab.decode(ds[0]["targets"].tolist()) == lc.example("multikey", 768, 0)["targets"] + "<|endoftext|>"
