"""`python -m glm_jax.eval passkey` scores a checkpoint, with the run's tokenizer or a named one."""

import dataclasses
import json

import jax
import pytest

from glm_jax import model
from glm_jax.data.tokenizer import bundled_tokenizer
from glm_jax.eval import passkey
from glm_jax.eval.__main__ import main
from glm_jax.train.checkpoint import save_params

ARGS = ["--lengths=128,256", "--depths=2", "--samples=1"]


@pytest.fixture(scope="module")
def foreign_run(tmp_path_factory):
    """A params-only checkpoint whose data mixture was registered in another process only."""
    from tests.conftest import REPO
    from glm_jax import config

    cfg = config.load(f"{REPO}/configs/debug.py")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mixture="passkey_registered_elsewhere"))
    params = model.init_params(cfg.model, jax.random.key(0))
    path = str(tmp_path_factory.mktemp("eval") / "ckpt")
    save_params(path, params, cfg)
    return path, params, cfg


def test_unknown_run_tokenizer_fails_naming_the_mixture_and_the_flag(foreign_run, capsys):
    path, _, _ = foreign_run
    with pytest.raises(SystemExit) as e:
        main(["passkey", f"--workdir={path}", *ARGS])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "data.mixture" in err and "--tokenizer=FILE" in err


def test_missing_tokenizer_file_is_named(foreign_run, tmp_path, capsys):
    path, _, _ = foreign_run
    with pytest.raises(SystemExit):
        main(["passkey", f"--workdir={path}", f"--tokenizer={tmp_path / 'nope.model'}", *ARGS])
    assert "--tokenizer" in capsys.readouterr().err and not (tmp_path / "eval").exists()


def test_named_tokenizer_scores_like_the_library(foreign_run, tmp_path):
    path, params, cfg = foreign_run
    tok = bundled_tokenizer()
    out = tmp_path / "pk"
    assert main(["passkey", f"--workdir={path}", f"--tokenizer={tok.path}", f"--out={out}", *ARGS]) == 0
    want = passkey.evaluate(params, cfg.model, tok, [128, 256], depths=2, samples=1)
    assert json.load(open(f"{out}.json")) == json.loads(json.dumps(want))
    assert (tmp_path / "pk.png").stat().st_size > 1000
