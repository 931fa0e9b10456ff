"""Tokenize a seqio Task once into an ArrayRecord cache in shared storage; read it from a local file.

A tf.data pipeline with a Python tokenizer cannot be checkpointed, so tokenization happens here,
before the checkpointed grain iterator. One directory per (task, split, vocabulary, source files,
preprocessors) key under the cache dir (a local path, a shared filesystem, or gs://); the
`validation` split's directory is named `<task>.validation-<key>`:

    <cache_dir>/<task>-<key>/examples.array_record   record i = example i: int32 ids (little
                                                     endian), then uint8 label mask if present,
                                                     then uint8 pair part (preference tasks)
    <cache_dir>/<task>-<key>/lengths.npy             int64 [N] tokens per example
    <cache_dir>/<task>-<key>/meta.json               task, vocabulary, counts, has_label_mask,
                                                     splittable, the files' sizes; written last

`build` tokenizes a key only while its meta.json is missing, into a local temporary directory: a
local cache dir receives it by one rename, a gs:// one by uploading the data files and then
meta.json, so a reader never sees a meta.json without its files. `open_cached` never tokenizes.
ArrayRecord reads local files only (its reader hangs on gs://), so a gs:// cache is read through a
local mirror, `<mirror_dir()>/<task>-<key>/`, downloaded once per host, checked against the remote
meta.json (same text, same file sizes) and renamed into place, so concurrent processes on one host
never see a partial mirror. Content is deterministic: two builders of one key write the same files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import uuid

import numpy as np
import seqio
import tensorflow as tf
from array_record.python.array_record_module import ArrayRecordWriter

from glm_jax import storage
from glm_jax.data.errors import DataError

FORMAT_VERSION = 2
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "glm_jax", "data")
DEFAULT_MIRROR_DIR = os.path.join(os.path.expanduser("~"), ".cache", "glm_jax", "mirror")
_DATA_FILES = ("examples.array_record", "lengths.npy")


class CacheMissing(DataError):
    """No complete cache of a task under the cache dir (it has not been built)."""


@dataclasses.dataclass(frozen=True)
class CachedTask:
    name: str
    path: str  # the local .array_record file (the cache itself, or its mirror)
    lengths: np.ndarray  # int64 [N]
    has_label_mask: bool
    splittable: bool  # may an example be cut into several rows (text yes, chat and preference no)
    has_pair_part: bool = False  # preference pairs: 0 on the chosen sequence, 1 on the rejected one

    def _length(self, record: bytes) -> int:
        return len(record) // (4 + self.has_label_mask + self.has_pair_part)

    def decode(self, record: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        """(ids int32 [L], label_mask uint8 [L] or None) of one record."""
        n = self._length(record)
        ids = np.frombuffer(record, "<i4", count=n).astype(np.int32)
        mask = np.frombuffer(record, np.uint8, offset=4 * n, count=n) if self.has_label_mask else None
        return ids, mask

    def pair_part(self, record: bytes) -> np.ndarray:
        """uint8 [L] of a preference record: 0 where the chosen sequence is, 1 the rejected one."""
        if not self.has_pair_part:
            raise DataError(f"task {self.name!r} holds no preference pairs (no pair_part feature)")
        n = self._length(record)
        return np.frombuffer(record, np.uint8, offset=(4 + self.has_label_mask) * n, count=n)


def cache_dir_for(configured: str) -> str:
    """`data.cache_dir`, else $GLM_JAX_DATA_CACHE, else ~/.cache/glm_jax/data (URLs kept as given)."""
    return storage.resolve(configured or os.environ.get("GLM_JAX_DATA_CACHE", "") or DEFAULT_CACHE_DIR)


def mirror_dir() -> str:
    """Where this host mirrors gs:// caches: $GLM_JAX_DATA_MIRROR, else ~/.cache/glm_jax/mirror."""
    return os.path.abspath(os.environ.get("GLM_JAX_DATA_MIRROR", "") or DEFAULT_MIRROR_DIR)


def _fn_name(fn) -> str:
    """A process-independent name (no memory addresses) for a preprocessor."""
    if isinstance(fn, functools.partial):
        return f"{_fn_name(fn.func)}{sorted(fn.keywords.items())}"
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def entry_name(task: seqio.Task, split: str = "train") -> str:
    """`<task>-<key>` (`<task>.<split>-<key>` for another split than train): the task's directory
    under the cache dir (and in the mirror)."""
    vocab = task.output_features["targets"].vocabulary
    if hasattr(task.source, "fingerprint"):
        source = task.source.fingerprint(split) if split != "train" else task.source.fingerprint()
    else:
        source = repr(task.source)
    desc = {"format": FORMAT_VERSION, "task": task.name, "split": split,
            "vocab": getattr(vocab, "fingerprint", repr(vocab)), "source": source,
            "preprocessors": [_fn_name(p) for p in task.preprocessors],
            "features": sorted(task.output_features)}
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
    return task.name.replace("/", "_") + ("" if split == "train" else f".{split}") + f"-{key}"


def is_built(task: seqio.Task, cache_dir: str, split: str = "train") -> bool:
    return storage.isfile(storage.join(cache_dir, entry_name(task, split), "meta.json"))


def build(task: seqio.Task, cache_dir: str, split: str = "train") -> bool:
    """Tokenizes `task`'s `split` into `cache_dir` unless it is there; True if it tokenized now."""
    if is_built(task, cache_dir, split):
        return False
    name = entry_name(task, split)
    final = storage.join(cache_dir, name)
    if storage.is_url(cache_dir):
        local = os.path.join(mirror_dir(), name)  # the builder's own mirror comes for free
        tmp = _tokenize(task, _tmp_name(local), split)
        for f in (*_DATA_FILES, "meta.json"):  # meta.json last: it marks the cache complete
            storage.upload(os.path.join(tmp, f), storage.join(final, f))
        _install(tmp, local)
    else:
        storage.makedirs(cache_dir)
        _install(_tokenize(task, _tmp_name(final), split), final)
    return True


def open_cached(task: seqio.Task, cache_dir: str, split: str = "train") -> CachedTask:
    """The handle of `task`'s built cache of `split` (mirrored to this host first if it is on gs://).

    Raises CacheMissing if it was never built.
    """
    remote = storage.join(cache_dir, entry_name(task, split))
    meta_path = storage.join(remote, "meta.json")
    if not storage.isfile(meta_path):
        raise CacheMissing(f"no tokenized cache of task {task.name!r}" + (f" (split {split})" if split != "train" else "")
                           + f" at {remote}")
    local = _mirror(remote, storage.read_text(meta_path)) if storage.is_url(remote) else remote
    with open(os.path.join(local, "meta.json")) as f:
        meta = json.load(f)
    return CachedTask(name=task.name, path=os.path.join(local, "examples.array_record"),
                      lengths=np.load(os.path.join(local, "lengths.npy")),
                      has_label_mask=meta["has_label_mask"], splittable=meta["splittable"],
                      has_pair_part=meta.get("has_pair_part", False))


def _tmp_name(final: str) -> str:
    return f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _is_complete(local: str, meta_text: str) -> bool:
    """Does the local directory hold exactly the cache that `meta_text` describes?"""
    try:
        with open(os.path.join(local, "meta.json")) as f:
            if f.read() != meta_text:
                return False
        sizes = json.loads(meta_text)["file_sizes"]
        return all(os.path.getsize(os.path.join(local, f)) == sizes[f] for f in _DATA_FILES)
    except (OSError, KeyError, ValueError):
        return False


def _install(tmp: str, final: str) -> None:
    """Renames the finished directory `tmp` to `final`; a complete `final` that is there wins."""
    with open(os.path.join(tmp, "meta.json")) as f:
        meta_text = f.read()
    if _is_complete(final, meta_text):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if os.path.exists(final):  # stale or partial (e.g. an older mirror): replace it
        old = _tmp_name(final) + ".old"
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:  # another process installed it meanwhile; its content is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _mirror(remote: str, meta_text: str) -> str:
    """The local copy of the gs:// cache directory `remote`, downloaded unless already complete."""
    local = os.path.join(mirror_dir(), storage.basename(remote))
    if _is_complete(local, meta_text):
        return local
    tmp = _tmp_name(local)
    os.makedirs(tmp)
    sizes = json.loads(meta_text)["file_sizes"]
    for f in _DATA_FILES:
        storage.download(storage.join(remote, f), os.path.join(tmp, f))
        if os.path.getsize(os.path.join(tmp, f)) != sizes[f]:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{storage.join(remote, f)} has {os.path.getsize(os.path.join(tmp, f))} bytes, its "
                            f"meta.json says {sizes[f]}: the cache is damaged; delete {remote} and build it again")
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        f.write(meta_text)
    _install(tmp, local)
    return local


def _examples(task: seqio.Task, split: str):
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False, num_epochs=1)
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


def _tokenize(task: seqio.Task, out: str, split: str = "train") -> str:
    """Writes the cache files of `task` into the new local directory `out`; returns `out`."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    has_mask = "label_mask" in task.output_features  # always for our tasks; optional for others
    has_part = "pair_part" in task.output_features  # preference tasks
    lengths = []
    writer = ArrayRecordWriter(os.path.join(out, "examples.array_record"), "group_size:1")
    try:
        for ex in _examples(task, split):
            ids = np.asarray(ex["targets"], "<i4")
            record = ids.tobytes()
            if has_mask:
                record += np.asarray(ex["label_mask"], np.uint8).tobytes()
            if has_part:
                record += np.asarray(ex["pair_part"], np.uint8).tobytes()
            writer.write(record)
            lengths.append(len(ids))
    except BaseException:
        writer.close()
        shutil.rmtree(out, ignore_errors=True)
        raise
    writer.close()
    if not lengths:
        shutil.rmtree(out, ignore_errors=True)
        raise DataError(f"task {task.name!r} produced no examples (split {split}); check its files")
    np.save(os.path.join(out, "lengths.npy"), np.asarray(lengths, np.int64))
    splittable = bool(getattr(task.source, "splittable", True))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"task": task.name, "split": split, "num_examples": len(lengths), "num_tokens": int(sum(lengths)),
                   "has_label_mask": has_mask, "has_pair_part": has_part, "splittable": splittable,
                   "vocab": repr(task.output_features["targets"].vocabulary),
                   "file_sizes": {n: os.path.getsize(os.path.join(out, n)) for n in _DATA_FILES}}, f, indent=1)
    return out
