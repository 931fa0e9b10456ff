"""Through the real `python -m glm_jax.train` on the bundled seqio mixture: SIGTERM mid-run, then a
restart, gives bit-identical per-step losses to a straight run (model, optimizer and data order),
and the console shows the run, not the libraries."""

import re
import subprocess
import sys

import pytest

from tests import cli
from tests.conftest import REPO
from tests.train.test_resume import _losses

FLAGS = ["--config=configs/debug.py", "--config.train.steps=12", "--config.train.seq_len=128",
         "--config.checkpoint.every_steps=4", "--config.train.log_every=1", "--config.mesh.fsdp=4",
         "--config.mesh.tensor=2", "--config.data.mixture=bundled_zh_en"]
USER_ENV = cli.env(quiet=False)  # as a user's shell has it: the CLI quiets the libraries itself

_OURS = re.compile(r"data: tokenized task .*|\[main\] step \d+/12  loss .*|checkpoint step \d+: saving to .*|\[main\] done at step 12 .*|"
                   r"finished at step 12 \(stage 'main'\); workdir .*")


@pytest.mark.slow
def test_sigterm_through_the_cli_on_bundled_data_resumes_exactly(tmp_path):
    cmd = [sys.executable, "-m", "glm_jax.train"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run = subprocess.run(cmd + FLAGS + [f"--workdir={straight}"], env=USER_ENV, cwd=REPO, check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    lines = run.stdout.splitlines()
    # The README's main command prints this and nothing else: a progress line per log step (12),
    # a line per checkpoint (3), the end of the stage and of the run (and, on a new machine, one per
    # task tokenized into the cache). No library logging.
    assert [line for line in lines if not _OURS.fullmatch(line)] == [], run.stdout[-3000:]
    ours = [line for line in lines if not line.startswith("data: tokenized")]
    assert sum(line.startswith("[main] step") for line in ours) == 12 and len(ours) == 12 + 3 + 2
    out = cli.sigterm_on("step 6/12", *cmd[1:], *FLAGS, f"--workdir={resumed}", env=USER_ENV, timeout=300)
    assert "preempted at step" in out
    again = subprocess.run(cmd + FLAGS + [f"--workdir={resumed}"], env=USER_ENV, cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and "restored checkpoint at step" in again.stdout + again.stderr
    want = _losses(straight)
    assert sorted(want) == list(range(1, 13))
    assert _losses(resumed) == want  # bit for bit, data order included
