"""Run the notebooks top to bottom and keep their outputs (plots included): what is committed.

    python notebooks/execute.py                            # every notebook, in place, full settings
    python notebooks/execute.py --small --out_dir=/tmp/nb  # CI's small settings, copies elsewhere

Each notebook asserts the facts it shows, so a run that completes is a check; a failing cell
stops with its error and nothing is written for that notebook. Outputs keep stdout, results and
plots; stderr (library warnings, progress bars) is dropped.
"""

import argparse
import os
import sys

import nbclient
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def execute(path: str, small: bool):
    """The notebook at `path` executed in its own folder; GLM_JAX_NOTEBOOK_SMALL=1 when `small`."""
    nb = nbformat.read(path, as_version=4)
    os.environ["GLM_JAX_NOTEBOOK_SMALL"] = "1" if small else "0"
    os.environ.pop("XLA_FLAGS", None)  # the notebook sets its own before importing jax
    nbclient.NotebookClient(nb, timeout=3600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    return without_stderr(nb)


def without_stderr(nb):
    """`nb` with its stderr stream outputs removed (what the committed notebooks show)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python notebooks/execute.py", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="notebook file names (default: every notebooks/*.ipynb)")
    p.add_argument("--small", action="store_true", help="CI's small settings (GLM_JAX_NOTEBOOK_SMALL=1)")
    p.add_argument("--out_dir", default=HERE, help="where the executed notebooks go (default: in place)")
    a = p.parse_args(argv)
    names = a.names or sorted(f for f in os.listdir(HERE) if f.endswith(".ipynb"))
    os.makedirs(a.out_dir, exist_ok=True)
    for name in names:
        nb = execute(os.path.join(HERE, name), a.small)
        nbformat.write(nb, os.path.join(a.out_dir, name))
        print(f"executed {name} -> {os.path.join(a.out_dir, name)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
