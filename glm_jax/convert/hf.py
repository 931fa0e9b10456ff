"""Export our parameters to a HuggingFace/THUDM checkpoint directory, and import one back.

    export(params, cfg, out_dir, naming="hf", dtype="bfloat16")   # -> AutoModelForCausalLM.from_pretrained(out_dir)
    params = import_dir(hf_dir, cfg)                                # naming detected from the tensor names
    read = dir_reader(hf_dir, cfg)                                  # the same, read(path, layer) on demand

Export writes into a temporary sibling directory and renames it into place only when every file
is written, so a failure leaves nothing partial at `out_dir`. Import validates every tensor name
and shape (and config.json's rope theta, eps, ...) against the config before reading any tensor.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Mapping

import jax
import numpy as np

from glm_jax.config import ModelConfig
from glm_jax.convert import hf_config, keymap, safetensors_dir
from glm_jax.convert.keymap import ConversionError

if TYPE_CHECKING:
    from glm_jax.train.checkpoint import LeafReader

_NP_DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16, "float16": np.float16}


def detect_naming(names: list[str]) -> str:
    """'thudm' when the tensors carry THUDM's `transformer.` prefix, else 'hf'."""
    return "thudm" if any(n.startswith("transformer.") for n in names) else "hf"


def _prepare_out_dir(out_dir: str) -> str:
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ConversionError(f"--out {out_dir!r} exists and is not empty; choose a new directory")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".partial-", dir=parent)


def _commit_out_dir(tmp: str, out_dir: str) -> None:
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked in _prepare_out_dir)
    os.replace(tmp, out_dir)


def export(params: Mapping | LeafReader, cfg: ModelConfig, out_dir: str, *, naming: str = "hf", dtype: str = "float32",
           eos_token_ids: list[int] | None = None, pad_token_id: int | None = None,
           extra_files: Mapping[str, str] | None = None, max_shard_bytes: int = 2 << 30,
           thudm_code: str = "glm4") -> None:
    """Writes sharded safetensors + index, config.json and generation_config.json to `out_dir`.

    `params` is the tree or a `LeafReader` (asked for a layer at a time, see keymap.export_tensors).
    `extra_files` maps file names to source paths copied alongside (e.g. tokenizer files);
    `thudm_code` picks the remote code a THUDM config.json points at (hf_config.THUDM_CODE_REPOS)."""
    if dtype not in _NP_DTYPES:
        raise ConversionError(f"--dtype must be one of {sorted(_NP_DTYPES)}, got {dtype!r}")
    if naming == "thudm":
        hf_config.check_thudm_weights(cfg)  # what THUDM's code cannot run (its rotary fraction is fixed)
    tmp = _prepare_out_dir(out_dir)
    try:
        tensors = itertools.chain(keymap.export_tensors(params, cfg, naming, _NP_DTYPES[dtype]),
                                  keymap.derived_buffers(cfg, naming, _NP_DTYPES[dtype]))
        safetensors_dir.write_sharded(tmp, tensors, max_shard_bytes)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config.to_hf_config(cfg, naming, dtype, eos_token_ids, pad_token_id, thudm_code), f,
                      indent=2)
        generation = {"do_sample": False}
        if eos_token_ids:
            generation["eos_token_id"] = eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]
        if pad_token_id is not None:
            generation["pad_token_id"] = pad_token_id
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, os.path.join(tmp, name))
        _commit_out_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dir_reader(hf_dir: str, cfg: ModelConfig, naming: str | None = None) -> LeafReader:
    """Checks a checkpoint directory (sharded or single safetensors, bf16 or fp32, HF or THUDM
    names; config.json if present) against `cfg`, then returns a `LeafReader` over it that reads
    only the tensors each leaf, or layer of a stacked leaf, comes from."""
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"--hf {hf_dir!r} is not a directory")
    config_path = os.path.join(hf_dir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            hf_config.check_against(json.load(f), cfg)
    shapes, get_tensor = safetensors_dir.read_index(hf_dir)
    naming = naming or detect_naming(list(shapes))
    if naming == "thudm":
        hf_config.check_thudm_weights(cfg)  # THUDM's code fixes the rotary fraction: shapes cannot show it
    return keymap.import_reader(get_tensor, shapes, cfg, naming)


def import_dir(hf_dir: str, cfg: ModelConfig, naming: str | None = None) -> dict:
    """The whole numpy parameter tree (cfg.param_dtype) of a checkpoint directory; see `dir_reader`."""
    return keymap.read_tree(dir_reader(hf_dir, cfg, naming), cfg)
