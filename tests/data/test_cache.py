"""The tokenized cache: built once per (task, tokenizer), only opened by iterators, shareable on gs://.

Tokenizations are counted by wrapping cache._tokenize (the one function that tokenizes)."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from glm_jax import storage
from glm_jax.config import ConfigError
from glm_jax.data import cache as cache_lib
from glm_jax.data import loader, tasks
from tests import cli
from tests.conftest import REPO
from tests.data.conftest import corpus_texts
from tests.gcs import list_objects


@pytest.fixture
def tokenizations(monkeypatch):
    """A list that records the name of every task tokenized from now on (in this process)."""
    seen, real = [], cache_lib._tokenize

    def counting(task, out, *split):
        seen.append(task.name)
        return real(task, out, *split)

    monkeypatch.setattr(cache_lib, "_tokenize", counting)
    return seen


def _jsonl_gz(texts) -> bytes:
    return gzip.compress("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode())


@pytest.fixture(scope="module")
def small_mix(tmp_path_factory):
    """Two small local text tasks mixed 1:1 (documents of the bundled corpus)."""
    d = tmp_path_factory.mktemp("small_src")
    (d / "zh.jsonl.gz").write_bytes(_jsonl_gz(corpus_texts("zh")[:60]))
    (d / "en.jsonl.gz").write_bytes(_jsonl_gz([t[:3000] for t in corpus_texts("en")[:12]]))
    tasks.register_text_task("test_small_zh", str(d / "zh.jsonl.gz"))
    tasks.register_text_task("test_small_en", str(d / "en.jsonl.gz"))
    tasks.register_mixture("test_small_mix", [("test_small_zh", 0.5), ("test_small_en", 0.5)])
    return d


def _cfg(data_cfg, cache_dir, mixture="test_small_mix"):
    return data_cfg(f"data.cache_dir={str(cache_dir)!r}", f"data.mixture={mixture!r}", "train.seq_len=128")


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        for k in loader.FEATURES:
            np.testing.assert_array_equal(x[k], y[k])


def test_caches_are_built_once_and_iterators_only_open_them(data_cfg, small_mix, tmp_path, tokenizations):
    cfg = _cfg(data_cfg, tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"data.cache_dir.*no tokenized cache of task 'test_small_\w+' at "
                                          r".*python -m glm_jax.data build"):
        loader.make_iterator(cfg, rows=[0], build_missing=False)
    assert tokenizations == []
    assert sorted(loader.build_caches(cfg)) == ["test_small_en", "test_small_zh"]
    assert sorted(tokenizations) == ["test_small_en", "test_small_zh"]
    assert loader.build_caches(cfg) == []  # a second build tokenizes nothing
    want = _take(loader.make_iterator(cfg, rows=[0, 5], build_missing=False), 3)
    _take(loader.make_iterator(cfg, rows=[0, 5]), 1)  # the single-process default builds only what is missing
    assert len(tokenizations) == 2
    assert len(os.listdir(tmp_path / "cache")) == 2  # no temporary directories left behind
    _assert_same(_take(loader.make_iterator(cfg, rows=[0, 5], build_missing=False), 3), want)


def test_cache_and_sources_in_a_bucket_read_through_an_empty_mirror(data_cfg, small_mix, gcs_server, gcs_bucket,
                                                                     tmp_path, monkeypatch, tokenizations):
    """Sources as a gs:// glob, cache in the bucket; a host with an empty mirror gets the same batches."""
    for name in ("zh", "en"):
        storage.write_bytes(f"{gcs_bucket}/src/part-{name}.jsonl.gz", (small_mix / f"{name}.jsonl.gz").read_bytes())
    tasks.register_text_task("test_gcs_text", f"{gcs_bucket}/src/part-*.jsonl.gz")
    local_src = tmp_path / "src"
    local_src.mkdir()
    for name in ("zh", "en"):
        (local_src / f"part-{name}.jsonl.gz").write_bytes((small_mix / f"{name}.jsonl.gz").read_bytes())
    tasks.register_text_task("test_local_text", str(local_src / "part-*.jsonl.gz"))

    monkeypatch.setenv("GLM_JAX_DATA_MIRROR", str(tmp_path / "builder_mirror"))
    cfg = _cfg(data_cfg, f"{gcs_bucket}/cache", "test_gcs_text")
    assert loader.build_caches(cfg) == ["test_gcs_text"]
    entry = cache_lib.entry_name(tasks.tasks_and_rates("test_gcs_text")[0][0])
    assert list_objects(gcs_server, gcs_bucket, "cache/") == [
        f"cache/{entry}/{f}" for f in ("examples.array_record", "lengths.npy", "meta.json")]
    assert loader.build_caches(cfg) == [] and tokenizations == ["test_gcs_text"]

    monkeypatch.setenv("GLM_JAX_DATA_MIRROR", str(tmp_path / "reader_mirror"))  # another host: empty mirror
    got = _take(loader.make_iterator(cfg, rows=[2, 3], build_missing=False), 3)
    assert tokenizations == ["test_gcs_text"]  # the reader downloaded, never tokenized
    assert sorted(os.listdir(tmp_path / "reader_mirror")) == [entry]
    local = _take(loader.make_iterator(_cfg(data_cfg, tmp_path / "local_cache", "test_local_text"), rows=[2, 3]), 3)
    _assert_same(got, local)  # the same documents cached locally give the same rows

    damaged = tmp_path / "reader_mirror" / entry / "examples.array_record"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a truncated mirror is noticed and fetched again
    _assert_same(_take(loader.make_iterator(cfg, rows=[2, 3], build_missing=False), 3), got)
    assert sorted(os.listdir(tmp_path / "reader_mirror")) == [entry]


@pytest.mark.slow
def test_build_cli_tokenizes_once(tmp_path):
    cmd = [sys.executable, "-m", "glm_jax.data", "build", "--config=configs/debug.py",
           f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.mixture=bundled_chat_sft"]
    env = cli.env()
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"tokenized 1 task(s) into {tmp_path / 'cache'}: bundled_chat_sft" in first.stdout
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "every task of 'bundled_chat_sft' is already cached" in again.stdout, again.stderr[-2000:]
    bad = subprocess.run([*cmd, "extra"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "usage: python -m glm_jax.data [show|build]" in bad.stderr


_HOST = """
import json, os, sys
import numpy as np
from glm_jax import config
from glm_jax.data import loader, tasks
src, cache_dir, first, out = sys.argv[1:]
tasks.register_text_task("test_small_zh", os.path.join(src, "zh.jsonl.gz"))
tasks.register_text_task("test_small_en", os.path.join(src, "en.jsonl.gz"))
tasks.register_mixture("test_small_mix", [("test_small_zh", 0.5), ("test_small_en", 0.5)])
cfg = config.load("configs/debug.py", [f"data.cache_dir={cache_dir!r}", "data.mixture='test_small_mix'",
                                       "train.seq_len=128"])
it = loader.make_iterator(cfg, rows=range(int(first), int(first) + 4), build_missing=False)
bs = [next(it) for _ in range(3)]
np.savez(out + ".npz", **{f"{k}_{i}": b[k] for i, b in enumerate(bs) for k in b})
json.dump(it.get_state(), open(out + ".json", "w"))
"""


@pytest.mark.slow
def test_two_processes_read_their_rows_of_a_bucket_cache_and_resume_as_one(data_cfg, small_mix, gcs_bucket,
                                                                            tmp_path, tokenizations):
    """Two "hosts" (processes, each with an empty mirror) read rows 0-3 and 4-7 of a cache in the bucket;
    together they are the one-process batches, and their merged state resumes in one process."""
    cfg = _cfg(data_cfg, f"{gcs_bucket}/cache")
    loader.build_caches(cfg)
    env = cli.env()
    hosts = [subprocess.Popen([sys.executable, "-c", _HOST, str(small_mix), f"{gcs_bucket}/cache", str(first),
                               str(tmp_path / f"host{first}")], cwd=REPO, stderr=subprocess.PIPE,
                              env={**env, "GLM_JAX_DATA_MIRROR": str(tmp_path / f"mirror{first}")})
             for first in (0, 4)]
    for h in hosts:
        _, err = h.communicate(timeout=300)
        assert h.returncode == 0, err.decode()[-3000:]
    assert sorted(tokenizations) == ["test_small_en", "test_small_zh"]  # built once, here; hosts only download
    assert all(os.listdir(tmp_path / f"mirror{first}") for first in (0, 4))
    one = loader.make_iterator(cfg, rows=range(8), build_missing=False)
    out = [np.load(tmp_path / f"host{first}.npz") for first in (0, 4)]
    _assert_same(_take(one, 3), [{k: np.concatenate([o[f"{k}_{i}"] for o in out]) for k in loader.FEATURES}
                                 for i in range(3)])
    want = _take(one, 2)
    resumed = loader.make_iterator(cfg, rows=range(8), build_missing=False)
    resumed.set_state(loader.merge_states([json.loads((tmp_path / f"host{first}.json").read_text())
                                           for first in (0, 4)]))
    _assert_same(_take(resumed, 2), want)
