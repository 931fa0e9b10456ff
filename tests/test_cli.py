"""Every CLI is quiet like `train`: no absl / orbax / TensorFlow INFO lines on stderr unless
`--verbose` (glm_jax/cli.py), run as a user runs them, on one tiny trained run."""

import re

import pytest

from tests import cli

ENV = cli.env(quiet=False)  # what a user's shell has: the CLI itself must quiet TensorFlow
# absl's log prefix (Python and C++: "I0102 03:04:05.678 ..."), Python logging's default, and
# TensorFlow's C++ start-up line.
INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d|^INFO:|absl::InitializeLog", re.MULTILINE)


def _run(*args):
    return cli.run("-m", *args, env=ENV)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    proc = _run("glm_jax.train", "--config=configs/debug.py", f"--workdir={workdir}", "--config.train.steps=1",
                "--config.train.seq_len=128", "--config.train.batch_size=8", "--config.checkpoint.async_save=False",
                "--config.model.num_layers=1")
    assert not INFO.search(proc.stderr), proc.stderr[-3000:]
    return workdir


@pytest.mark.parametrize("cli", ["convert", "generate", "eval"])
def test_cli_hides_library_info_lines_unless_verbose(workdir, tmp_path, cli):
    args = {"convert": ["glm_jax.convert", "to-hf", f"--workdir={workdir}"],
            "generate": ["glm_jax.generate", f"--workdir={workdir}", "--prompt=Hello", "--max_new_tokens=2"],
            "eval": ["glm_jax.eval", "passkey", f"--workdir={workdir}", "--lengths=128", "--depths=1",
                     "--samples=1"]}[cli]
    out = {"convert": "--out=", "generate": None, "eval": "--out="}[cli]
    quiet = _run(*args, *([f"{out}{tmp_path / 'quiet'}"] if out else []))
    assert not INFO.search(quiet.stderr), quiet.stderr[-3000:]
    verbose = _run(*args, *([f"{out}{tmp_path / 'verbose'}"] if out else []), "--verbose")
    assert INFO.search(verbose.stderr), verbose.stderr[-3000:]
