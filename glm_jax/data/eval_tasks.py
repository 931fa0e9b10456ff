"""The bundled evaluation sets as seqio Tasks with metric_fns; registered on import.

    bundled_mc     zh + en multiple choice in MMLU format (data/eval/mc_test.jsonl): one example per
                   option, inputs "question\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:", targets " A" ..
                   " D"; score metric `accuracy`: the question's best-scored option is its answer
    bundled_arith  arithmetic word problems in GSM8K format (data/eval/arith_test.jsonl): inputs
                   "Question: ..\\nAnswer:", targets the worked answer; predict metric `exact_match`
                   on the number after "####"

Split `validation` only (the *_test.jsonl files, zero-shot), tokenized with the bundled
tokenizer. The prompts are those of the lm-eval tasks over the same files (data/eval/tasks/),
so a model's `bundled_mc` accuracy is the same number through either harness.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.paths import DATA_DIR
from glm_jax.data.tokenizer import bundled_tokenizer

EVAL_DIR = os.path.join(DATA_DIR, "eval")
LETTERS = ("A", "B", "C", "D")
_ANSWER = re.compile(r"#### (-?[0-9.,]+)")


def _rows(name: str) -> list[dict]:
    with open(os.path.join(EVAL_DIR, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _mc_examples(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del split, shuffle_files, seed
    ex = {"inputs": [], "targets": [], "question": [], "is_correct": []}
    for q, row in enumerate(_rows("mc_test.jsonl")):
        prompt = row["question"].strip() + "".join(f"\n{k}. {c}" for k, c in zip(LETTERS, row["choices"])) + "\nAnswer:"
        for k, letter in enumerate(LETTERS):
            ex["inputs"].append(prompt)
            ex["targets"].append(" " + letter)
            ex["question"].append(q)
            ex["is_correct"].append(k == row["answer"])
    return tf.data.Dataset.from_tensor_slices(ex)


def _arith_examples(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del split, shuffle_files, seed
    rows = _rows("arith_test.jsonl")
    return tf.data.Dataset.from_tensor_slices({"inputs": [f"Question: {r['question']}\nAnswer:" for r in rows],
                                               "targets": [" " + r["answer"] for r in rows]})


def mc_option(target: str, example: dict, is_target: bool):
    """postprocess_fn: a target becomes (question index, is it the answer); scores pass through."""
    return (int(example["question"]), bool(example["is_correct"])) if is_target else target


def rank_accuracy(targets, scores) -> dict:
    """The fraction of questions whose highest-scored option is the correct one."""
    best: dict[int, tuple[float, bool]] = {}
    for (question, correct), score in zip(targets, scores):
        if question not in best or score > best[question][0]:
            best[question] = (float(score), correct)
    return {"accuracy": float(np.mean([correct for _, correct in best.values()]))}


def final_number(text: str, example=None, is_target: bool = False) -> str:
    """postprocess_fn: the number after "####" with commas dropped ("" when there is none)."""
    del example, is_target
    m = _ANSWER.search(text)
    return m.group(1).replace(",", "").rstrip(".") if m else ""


def exact_match(targets, predictions) -> dict:
    return {"exact_match": float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _register() -> None:
    vocab = bundled_tokenizer()

    def features(answer_eos: bool) -> dict:
        return {"inputs": seqio.Feature(vocab, add_eos=False), "targets": seqio.Feature(vocab, add_eos=answer_eos)}

    steps = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
    seqio.TaskRegistry.add("bundled_mc", source=seqio.FunctionDataSource(_mc_examples, splits=["validation"]),
                           preprocessors=steps, output_features=features(False), postprocess_fn=mc_option,
                           metric_fns=[rank_accuracy])
    seqio.TaskRegistry.add("bundled_arith", source=seqio.FunctionDataSource(_arith_examples, splits=["validation"]),
                           preprocessors=steps, output_features=features(True), postprocess_fn=final_number,
                           metric_fns=[exact_match])


if "bundled_mc" not in seqio.TaskRegistry.names():
    _register()
