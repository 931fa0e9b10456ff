"""Long-context retrieval generated at any length, as seqio tasks with a predict metric (RULER's
passkey, multi-key and variable-tracking, over the bundled English prose).

    long_passkey_<N>    one 5-digit pass key hidden at a depth of N tokens of prose; answer: the key
    long_multikey_<N>   4 "The special magic number for <word> is <number>." needles at random
                        depths; answer: the number of one of the words
    long_vartrack_<N>   a chain "VAR A = 12345." "VAR B = VAR A." ... spread through the prose;
                        answer: every variable holding the value, in the order they were assigned

    register(1024)                            # the three tasks at ~1,024 tokens (also at import:
                                              # 512, 1024, ..., 32768)
    python -m glm_jax.eval seqio --workdir=DIR --tasks=long_passkey_2048,long_multikey_2048,long_vartrack_2048

Each has EXAMPLES examples in its `validation` split, deterministic (seeded by the task and
length), inputs about N tokens of the bundled tokenizer (the haystack is a window of
data/corpus/en.jsonl.gz, cut in tokens and decoded), targets the answer with a leading space.
Metric `exact_match`: the greedy prediction, whitespace-stripped, equals the answer.
"""

from __future__ import annotations

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.eval_tasks import exact_match
from glm_jax.data.tokenizer import bundled_tokenizer
from glm_jax.eval import passkey

EXAMPLES = 32
LENGTHS = tuple(512 * 2 ** k for k in range(7))  # registered at import: 512 .. 32768
KINDS = ("passkey", "multikey", "vartrack")
WORDS = ("apple", "river", "candle", "falcon", "meadow", "violin", "harbor", "pepper", "glacier", "lantern")
VARIABLES = ("A", "B", "C", "D", "E", "F", "G", "H")
INSTRUCTION = {"passkey": passkey.INSTRUCTION,
               "multikey": "Some special magic numbers are hidden inside the text below. Memorize them; I will ask "
                           "about one of them.\n",
               "vartrack": "Memorize the variable assignments hidden inside the text below; I will ask which "
                           "variables hold a value.\n"}


def _needles_and_question(kind: str, rng: np.random.Generator) -> tuple[list[str], str, str]:
    """(needle sentences, question, answer) of one example."""
    if kind == "passkey":
        key = int(rng.integers(10_000, 100_000))
        return [passkey.NEEDLE.format(key=key)], passkey.QUESTION.rstrip(" "), str(key)
    if kind == "multikey":
        words = rng.choice(WORDS, 4, replace=False)
        numbers = rng.integers(1_000_000, 10_000_000, 4)
        needles = [f" The special magic number for {w} is {n}. " for w, n in zip(words, numbers)]
        asked = int(rng.integers(4))
        return needles, f"\nWhat is the special magic number for {words[asked]}? It is", str(numbers[asked])
    value = int(rng.integers(10_000, 100_000))
    names = list(rng.choice(VARIABLES, 4, replace=False))
    needles = [f" VAR {names[0]} = {value}. "] + [f" VAR {b} = VAR {a}. " for a, b in zip(names, names[1:])]
    return needles, f"\nWhich variables hold the value {value}? They are", " ".join(names)


def example(kind: str, length: int, index: int) -> dict[str, str]:
    """{"inputs", "targets"} of example `index` of the `kind` task at ~`length` tokens."""
    rng = np.random.default_rng([KINDS.index(kind), length, index])
    tok = bundled_tokenizer()
    needles, question, answer = _needles_and_question(kind, rng)
    fixed = len(tok.encode(INSTRUCTION[kind] + "".join(needles) + question + " " + answer))
    filler = length - fixed
    if filler < 16:
        raise ValueError(f"long_{kind}_{length}: {length} tokens leave no room for the haystack (the prompt alone "
                         f"is {fixed}); use a length of at least {fixed + 16}")
    hay = passkey.haystack_ids(tok)  # the same prose as passkey.evaluate
    start = int(rng.integers(max(1, len(hay) - filler)))
    window = np.resize(hay[start:], filler)
    cuts = np.sort(rng.integers(0, filler + 1, len(needles)))  # needles in order, at random depths
    pieces, prev = [INSTRUCTION[kind]], 0
    for cut, needle in zip(cuts, needles):
        pieces += [tok.decode(window[prev:cut].tolist()), needle]
        prev = cut
    pieces += [tok.decode(window[prev:].tolist()), question]
    return {"inputs": "".join(pieces), "targets": " " + answer}


def stripped(text: str, example=None, is_target: bool = False) -> str:
    del example, is_target
    return text.strip()


def task_name(kind: str, length: int) -> str:
    return f"long_{kind}_{length}"


def register(length: int) -> list[str]:
    """Registers the three tasks at ~`length` tokens (unless they are); returns their names."""
    vocab = bundled_tokenizer()
    names = []
    for kind in KINDS:
        name = task_name(kind, length)
        names.append(name)
        if name in seqio.TaskRegistry.names():
            continue

        def source(split, shuffle_files=False, seed=None, kind=kind):
            del split, shuffle_files, seed
            rows = [example(kind, length, i) for i in range(EXAMPLES)]
            return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in ("inputs", "targets")})

        seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(source, splits=["validation"]),
                               preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                               output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                                                "targets": seqio.Feature(vocab, add_eos=True)},
                               postprocess_fn=stripped, metric_fns=[exact_match])
    return names


for _n in LENGTHS:
    register(_n)
