"""A gs:// workdir against a real GCS emulator: everything the run writes lands in the bucket,
nothing on a local `gs:` path, and it resumes, restores and streams params from there."""

import os

import numpy as np
import pytest

from glm_jax import config, storage
from glm_jax.train import checkpoint, loop, metrics
from tests.conftest import REPO
from tests.gcs import list_objects
from tests.train import synthetic, test_loop

def _cd(*overrides):
    return test_loop._cd("train.log_every=2", "checkpoint.every_steps=2", *overrides)  # its small model


def test_a_run_on_gs_writes_only_to_the_bucket_and_resumes_there(gcs_server, gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = f"{gcs_bucket}/runs/one"
    assert loop.run(_cd("train.steps=2"), workdir, make_iterator=synthetic.make_iterator).step == 2
    result = loop.run(_cd("train.steps=4"), workdir, make_iterator=synthetic.make_iterator)
    assert (result.status, result.step) == ("finished", 4)

    objects = list_objects(gcs_server, gcs_bucket)
    assert "runs/one/config.json" in objects
    for step in (2, 4):
        assert any(o.startswith(f"runs/one/checkpoints/main/{step}/params/") for o in objects), objects
        assert any(o.startswith(f"runs/one/checkpoints/main/{step}/data/row_") for o in objects)
    assert any(o.startswith("runs/one/tb/") and "tfevents" in o for o in objects), objects
    assert [r["step"] for r in metrics.read_rows(workdir)] == [1, 2, 3, 4]
    assert not os.path.exists(tmp_path / "gs:") and not os.path.exists(os.path.join(REPO, "gs:"))

    params, cfg = checkpoint.restore_params(workdir)
    directory, _ = checkpoint.locate_params(workdir)
    read = checkpoint.param_reader(directory)  # tensorstore straight from the bucket, one layer at a time
    np.testing.assert_array_equal(read(("layers", "mlp", "wo", "kernel"), 0),
                                  np.asarray(params["layers"]["mlp"]["wo"]["kernel"])[0])
    assert cfg.train.steps == 4


def test_a_workdir_holding_another_run_is_refused_before_anything_runs(gcs_bucket):
    workdir = f"{gcs_bucket}/runs/two"
    loop.run(_cd("train.steps=2"), workdir, make_iterator=synthetic.make_iterator)
    calls = []
    with pytest.raises(config.ConfigError, match=r"holds a different run: train\.lr") as e:
        loop.run(_cd("train.steps=4", "train.lr=0.5"), workdir,
                 make_iterator=lambda cfg, **kw: calls.append(1))
    assert e.value.field == "workdir" and not calls
    assert storage.read_json(f"{workdir}/config.json")["stages"][0]["config"]["train"]["steps"] == 2  # kept


def test_a_missing_bucket_is_named_before_anything_runs(gcs_server):
    calls = []
    with pytest.raises(storage.StorageError, match="bucket gs://no-such-bucket does not exist"):
        loop.run(_cd(), "gs://no-such-bucket/run", make_iterator=lambda cfg, **kw: calls.append(1))
    assert not calls


def test_a_tokenizer_file_in_the_bucket_loads_like_the_local_one(gcs_bucket):
    from glm_jax.data.tokenizer import BUNDLED_TOKENIZER, load_tokenizer

    url = f"{gcs_bucket}/tokenizers/bundled.tiktoken"
    storage.write_bytes(url, open(BUNDLED_TOKENIZER, "rb").read())
    text = "GLM-4 在 TPU 上训练 tokens"
    local, remote = load_tokenizer(BUNDLED_TOKENIZER), load_tokenizer(url)
    assert remote.encode(text) == local.encode(text) and remote.fingerprint == local.fingerprint
    with pytest.raises(Exception, match="does not exist"):
        load_tokenizer(f"{gcs_bucket}/tokenizers/missing.tiktoken")
