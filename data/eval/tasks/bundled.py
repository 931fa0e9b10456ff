"""Loads the bundled evaluation sets (data/eval/*.jsonl, written by data/build_eval_sets.py) for
the task YAMLs beside this file (`custom_dataset: !function bundled.mc`). Paths are resolved from
this file's real location, so the tasks work from any working directory and through symlinks."""

import json
import os

import datasets

DATA = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # data/eval


def _splits(prefix: str) -> datasets.DatasetDict:
    out = {}
    for split in ("test", "dev"):
        with open(os.path.join(DATA, f"{prefix}_{split}.jsonl"), encoding="utf-8") as f:
            out[split] = datasets.Dataset.from_list([json.loads(line) for line in f if line.strip()])
    return datasets.DatasetDict(out)


def mc(**kwargs) -> datasets.DatasetDict:
    """Multiple choice, MMLU format: question, choices (4), answer (0..3), subject, language."""
    return _splits("mc")


def arith(**kwargs) -> datasets.DatasetDict:
    """Arithmetic word problems, GSM8K format: question, answer ("...\\n#### N")."""
    return _splits("arith")
