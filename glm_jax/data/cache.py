"""Tokenize a seqio Task once into an ArrayRecord file that grain reads by index.

A tf.data pipeline with a Python tokenizer cannot be checkpointed, so tokenization happens here,
before the checkpointed grain iterator. One directory per (task, vocabulary, source files,
preprocessors) key under the cache dir:

    <cache_dir>/<task>-<key>/examples.array_record   record i = example i: int32 ids (little
                                                     endian), then uint8 label mask if present
    <cache_dir>/<task>-<key>/lengths.npy             int64 [N] tokens per example
    <cache_dir>/<task>-<key>/meta.json               task, vocabulary, counts, has_label_mask

Built into a temporary directory and renamed, so concurrent processes (hosts sharing a
filesystem, a restarted run) never see a partial cache. Content is deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil

import numpy as np
import seqio
import tensorflow as tf
from array_record.python.array_record_module import ArrayRecordWriter

from glm_jax.data.errors import DataError

FORMAT_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "glm_jax", "data")


@dataclasses.dataclass(frozen=True)
class CachedTask:
    name: str
    path: str  # the .array_record file
    lengths: np.ndarray  # int64 [N]
    has_label_mask: bool
    splittable: bool  # may an example be cut into several rows (text yes, chat no)

    def decode(self, record: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        """(ids int32 [L], label_mask uint8 [L] or None) of one record."""
        n = len(record) // (5 if self.has_label_mask else 4)
        ids = np.frombuffer(record, "<i4", count=n).astype(np.int32)
        mask = np.frombuffer(record, np.uint8, offset=4 * n) if self.has_label_mask else None
        return ids, mask


def cache_dir_for(configured: str) -> str:
    return configured or os.environ.get("GLM_JAX_DATA_CACHE", "") or DEFAULT_CACHE_DIR


def _fn_name(fn) -> str:
    """A process-independent name (no memory addresses) for a preprocessor."""
    if isinstance(fn, functools.partial):
        return f"{_fn_name(fn.func)}{sorted(fn.keywords.items())}"
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _key(task: seqio.Task) -> str:
    vocab = task.output_features["targets"].vocabulary
    desc = {"format": FORMAT_VERSION, "task": task.name,
            "vocab": getattr(vocab, "fingerprint", repr(vocab)),
            "source": task.source.fingerprint() if hasattr(task.source, "fingerprint") else repr(task.source),
            "preprocessors": [_fn_name(p) for p in task.preprocessors],
            "features": sorted(task.output_features)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _examples(task: seqio.Task):
    ds = task.get_dataset(sequence_length=None, split="train", shuffle=False, use_cached=False, num_epochs=1)
    it = ds.as_numpy_iterator()
    while True:
        try:
            ex = next(it)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            # A DataError raised while reading a file surfaces wrapped by tf.data; unwrap its message.
            msg = e.message
            if "DataError: " in msg:
                raise DataError(msg.split("DataError: ", 1)[1].split("\n")[0]) from None
            raise
        yield ex


def cache_task(task: seqio.Task, cache_dir: str) -> CachedTask:
    """Materializes `task` (split train) under `cache_dir` unless already there; returns its handle."""
    final = os.path.join(cache_dir, f"{task.name.replace('/', '_')}-{_key(task)}")
    if not os.path.isfile(os.path.join(final, "meta.json")):
        _build(task, final)
    with open(os.path.join(final, "meta.json")) as f:
        meta = json.load(f)
    return CachedTask(name=task.name, path=os.path.join(final, "examples.array_record"),
                      lengths=np.load(os.path.join(final, "lengths.npy")),
                      has_label_mask=meta["has_label_mask"], splittable=meta["splittable"])


def _build(task: seqio.Task, final: str) -> None:
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    has_mask = "label_mask" in task.output_features  # always for our tasks; optional for others
    lengths = []
    writer = ArrayRecordWriter(os.path.join(tmp, "examples.array_record"), "group_size:1")
    try:
        for ex in _examples(task):
            ids = np.asarray(ex["targets"], "<i4")
            record = ids.tobytes()
            if has_mask:
                record += np.asarray(ex["label_mask"], np.uint8).tobytes()
            writer.write(record)
            lengths.append(len(ids))
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    writer.close()
    if not lengths:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"task {task.name!r} produced no examples; check its files")
    np.save(os.path.join(tmp, "lengths.npy"), np.asarray(lengths, np.int64))
    splittable = bool(getattr(task.source, "splittable", True))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"task": task.name, "num_examples": len(lengths), "num_tokens": int(sum(lengths)),
                   "has_label_mask": has_mask, "splittable": splittable,
                   "vocab": repr(task.output_features["targets"].vocabulary)}, f, indent=1)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first; its cache is identical
        shutil.rmtree(tmp, ignore_errors=True)
