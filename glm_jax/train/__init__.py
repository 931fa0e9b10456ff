"""Training: state, optimizer, loss/step, checkpoints, metrics and the stage loop.

`python -m glm_jax.train --config=configs/debug.py --workdir=DIR` (see __main__.py).
"""
