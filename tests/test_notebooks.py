"""Every notebook runs top to bottom on 8 simulated CPU devices (small settings) through the
command that regenerates them (notebooks/execute.py), asserting the facts it shows; and the
committed notebooks carry the outputs of such a run."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "notebooks", "execute.py"), "--small",
                           f"--out_dir={tmp_path}", name], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-5000:]
    nb = nbformat.read(str(tmp_path / name), as_version=4)
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_its_outputs(name):
    """What a visitor sees on GitHub: every code cell ran, in order, without error; its plots are there."""
    nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run python notebooks/execute.py"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    plots = sum("plt.show()" in c.source or "Image(" in c.source for c in code)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= plots
    assert "python notebooks/execute.py" in nb.cells[0].source  # how to regenerate them, at the top
