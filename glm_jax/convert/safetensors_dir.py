"""Sharded safetensors directories (the HuggingFace layout), streamed one tensor at a time.

Writing keeps at most one shard in memory: tensors are buffered until the shard would pass
`max_shard_bytes`, then written; `model.safetensors.index.json` maps every tensor to its shard.
Reading gives every tensor's shape from the shard headers up front and the tensors one by one,
so peak memory stays near one tensor (plus whatever the caller keeps).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def write_sharded(out_dir: str, tensors: Iterable[tuple[str, np.ndarray]], max_shard_bytes: int = 2 << 30) -> dict:
    """Writes `model-0000i-of-0000N.safetensors` shards and the index; returns the index dict."""
    shards: list[list[str]] = []
    weight_bytes = 0
    buffer: dict[str, np.ndarray] = {}
    buffered = 0

    def flush():
        nonlocal buffer, buffered
        if buffer:
            save_file(buffer, os.path.join(out_dir, f"shard-{len(shards):05d}.tmp"), metadata={"format": "pt"})
            shards.append(list(buffer))
            buffer, buffered = {}, 0

    for name, array in tensors:
        if buffered and buffered + array.nbytes > max_shard_bytes:
            flush()
        buffer[name] = array
        buffered += array.nbytes
        weight_bytes += array.nbytes
    flush()
    weight_map = {}
    for i, names in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(os.path.join(out_dir, f"shard-{i:05d}.tmp"), os.path.join(out_dir, final))
        weight_map.update({n: final for n in names})
    index = {"metadata": {"total_size": weight_bytes}, "weight_map": weight_map}
    with open(os.path.join(out_dir, INDEX), "w") as f:
        json.dump(index, f, indent=2)
    return index


def read_index(path: str) -> tuple[dict[str, tuple[int, ...]], Callable[[str], np.ndarray]]:
    """({tensor name: shape}, get_tensor) for a directory with an index or a single
    model.safetensors. Shapes come from the shard headers; get_tensor(name) reads one tensor.

    get_tensor opens the shard for each call: safetensors maps the file, and pages read through a
    mapping that stays open count towards the process's memory until it is closed."""
    index_path, single = os.path.join(path, INDEX), os.path.join(path, SINGLE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    elif os.path.isfile(single):
        with safe_open(single, "np") as f:
            weight_map = {n: SINGLE for n in f.keys()}
    else:
        raise FileNotFoundError(f"{path!r} holds neither {INDEX} nor {SINGLE}: not a safetensors checkpoint directory")
    shapes = {}
    for file in dict.fromkeys(weight_map.values()):
        with safe_open(os.path.join(path, file), "np") as f:
            shapes.update({n: tuple(f.get_slice(n).get_shape()) for n, fn in weight_map.items() if fn == file})

    def get_tensor(name: str) -> np.ndarray:
        with safe_open(os.path.join(path, weight_map[name]), "np") as f:
            return f.get_tensor(name)

    return shapes, get_tensor
