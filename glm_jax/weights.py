"""Load a model to run: params, architecture and tokenizer from wherever trained weights live.

    loaded = load(workdir="/tmp/run")                  # a training workdir: its latest checkpoint
    loaded = load(workdir="/tmp/run", step=2000)       # ... or checkpoint 2000
    loaded = load(workdir="/ckpt")                     # a params-only checkpoint (save_params, from-hf)
    loaded = load(hf="/models/glm-4-9b-hf")            # a HuggingFace / THUDM directory
    loaded = load(workdir=..., mesh=mesh)              # params sharded by the rule table on `mesh`

The tokenizer is `tokenizer` (a file) if given; else, for a checkpoint, the one it keeps in
`tokenizer/` (from-hf copies the released weights' files there), else the run's (`data.tokenizer`
or its mixture's); for an HF directory, its tokenizer.tiktoken or tokenizer.model.
Used by `python -m glm_jax.generate` and the lm-evaluation-harness backend (glm_jax/eval).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from glm_jax.config import ModelConfig, RunConfig


@dataclasses.dataclass(frozen=True)
class Loaded:
    params: dict
    cfg: ModelConfig  # the architecture
    run: RunConfig  # how it runs: the training run's (dtype, attention, ...), the defaults for an HF directory
    vocab: object  # a glm_jax.data.tokenizer vocabulary
    source: str  # what was loaded, for messages


def _hf(hf_dir: str, tokenizer: str | None):
    from glm_jax.convert import hf, hf_config
    from glm_jax.data.tokenizer import load_tokenizer

    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{hf_dir} has no config.json: not a HuggingFace checkpoint directory")
    with open(config_path) as f:
        cfg = hf_config.model_config_from_hf(json.load(f), name=os.path.basename(os.path.normpath(hf_dir)))
    if not tokenizer:
        files = [p for p in ("tokenizer.tiktoken", "tokenizer.model") if os.path.isfile(os.path.join(hf_dir, p))]
        if not files:
            raise FileNotFoundError(f"{hf_dir} has no tokenizer.tiktoken or tokenizer.model: cannot tokenize prompts "
                                    f"(name a tokenizer file)")
        tokenizer = os.path.join(hf_dir, files[0])
    return hf.import_dir(hf_dir, cfg), cfg, load_tokenizer(tokenizer)


def _workdir(workdir: str, step: int | None, tokenizer: str | None, mesh):
    from glm_jax.data.loader import vocabulary
    from glm_jax.data.tokenizer import checkpoint_tokenizer, load_tokenizer
    from glm_jax.train.checkpoint import restore_params

    params, cfg = restore_params(workdir, step, mesh)
    path = tokenizer or checkpoint_tokenizer(workdir)
    return params, cfg.model, cfg.run, (load_tokenizer(path) if path else vocabulary(cfg))


def load(workdir: str | None = None, step: int | None = None, hf: str | None = None, tokenizer: str | None = None,
         mesh: jax.sharding.Mesh | None = None) -> Loaded:
    """Exactly one of `workdir` (training workdir or params-only checkpoint; `step` picks a
    checkpoint) or `hf` (directory). Params land on `mesh` (sharded by the rule table) or, when
    None, on the host."""
    from glm_jax import model, sharding

    if bool(workdir) == bool(hf):
        raise ValueError("pass exactly one of workdir (a training workdir or params-only checkpoint) or hf "
                         "(a HuggingFace directory)")
    if hf:
        if step is not None:
            raise ValueError(f"step={step} picks a checkpoint of a training workdir; an HF directory has one")
        params, cfg, vocab = _hf(hf, tokenizer)
        run = RunConfig()
        if mesh is not None:
            params = jax.device_put(params, sharding.tree_shardings(mesh, model.param_specs(cfg)))
    else:
        params, cfg, run, vocab = _workdir(workdir, step, tokenizer, mesh)
    return Loaded(params, cfg, run, vocab, hf or workdir)
