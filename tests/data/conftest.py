"""Shared fixtures: one tokenized-data cache per test session, and debug configs that use it."""

import base64
import gzip
import itertools
import json
import os

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache"))


@pytest.fixture(scope="session")
def data_cfg(cache_dir):
    """data_cfg("train.seq_len=64", ...) -> the debug Config with those overrides, cached in the session dir."""
    from glm_jax import config

    def make(*overrides):
        return config.load(os.path.join(REPO, "configs", "debug.py"), [f"data.cache_dir={cache_dir!r}", *overrides])

    return make


def corpus_texts(name):
    with gzip.open(os.path.join(REPO, "data", "corpus", f"{name}.jsonl.gz"), "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def write_glm4_sized_tiktoken(path, num_ranks=151329):
    """A tiktoken-format file with as many ranks as GLM-4's: all 1-, 2- and then 3-byte strings."""
    tokens = itertools.chain((bytes([b]) for b in range(256)),
                             (bytes([a, b]) for a in range(256) for b in range(256)),
                             (bytes([a, b, c]) for a in range(256) for b in range(256) for c in range(256)))
    with open(path, "w") as f:
        for rank, t in enumerate(itertools.islice(tokens, num_ranks)):
            f.write(f"{base64.b64encode(t).decode()} {rank}\n")
    return str(path)
