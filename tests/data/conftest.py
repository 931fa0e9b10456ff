"""Shared fixtures: one tokenized-data cache per test session, and debug configs that use it."""

import gzip
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
