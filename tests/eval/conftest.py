"""Shared by the lm-eval tests: a debug model as a params-only checkpoint and as the HF
directory `python -m glm_jax.convert to-hf --dtype=float32` makes of it, and the CLIs that
evaluate them."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests import cli
from tests.conftest import REPO

ENV = cli.env(HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="session")
def sharp_checkpoint(tmp_path_factory):
    """A params-only checkpoint of the debug model with sharpened random weights (x3 on every
    matrix: confident enough that greedy flags and decoding are not ties)."""
    import jax

    from glm_jax import config, model
    from glm_jax.train.checkpoint import save_params

    cfg = config.load(os.path.join(REPO, "configs", "debug.py"))
    params = model.init_params(cfg.model, jax.random.key(0))
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 2 else x, params)
    ckpt = str(tmp_path_factory.mktemp("sharp") / "ckpt")
    save_params(ckpt, params, cfg)
    return ckpt


@pytest.fixture(scope="session")
def debug_model(sharp_checkpoint, tmp_path_factory):
    """(params-only checkpoint dir, HF dir `to-hf --dtype=float32` made of it) of sharp_checkpoint."""
    ckpt, hf = sharp_checkpoint, str(tmp_path_factory.mktemp("lm_eval_model") / "hf")
    proc = subprocess.run([sys.executable, "-m", "glm_jax.convert", "to-hf", f"--workdir={ckpt}", f"--out={hf}",
                           "--dtype=float32"], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt, hf


def start(*args: str) -> subprocess.Popen:
    """Starts `python ARGS` (e.g. "-m", "glm_jax.eval", "lm-eval", ...) in the repository."""
    return subprocess.Popen([sys.executable, *args], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, ok: bool = True) -> tuple[str, str]:
    out, err = proc.communicate(timeout=1500)
    if ok:
        assert proc.returncode == 0, err[-4000:]
    return out, err


def samples(output_path: str, task: str) -> list[dict]:
    """lm-eval's --log_samples records of `task` under --output_path, by doc id."""
    (path,) = glob.glob(os.path.join(output_path, "*", f"samples_{task}_*.jsonl"))
    with open(path) as f:
        return sorted((json.loads(line) for line in f), key=lambda r: r["doc_id"])


def results(output_path: str) -> dict:
    (path,) = glob.glob(os.path.join(output_path, "*", "results_*.json"))
    with open(path) as f:
        return json.load(f)["results"]
