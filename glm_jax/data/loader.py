"""The training data stream: a seqio Task/Mixture served by grain, packed, per host, checkpointable.

Contract (the training loop relies on it):

    it = make_iterator(cfg, process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)            # this host's rows, a dict of numpy arrays, each [B_local, T]
    state = it.get_state()      # small JSON-serialisable dict: store it with the orbax checkpoint
    it.set_state(state)         # also in a new process: the following batches are identical

B_local = cfg.train.batch_size // process_count, T = cfg.train.seq_len, and
    tokens       int32    input ids
    targets      int32    the next token of the same document (0 where there is none; masked)
    positions    int32    0, 1, ... restarting at each document (piece) in the row
    segment_ids  int32    1, 2, ... per document in the row; 0 = padding
    loss_mask    float32  1 where `targets` counts: not padding, not across documents, and for
                          chat SFT only what the assistant says (chat.py)

The stream is infinite: each task repeats, reshuffled per epoch deterministically from
`cfg.data.seed`. Data is `cfg.data.mixture` (a registered seqio Task or Mixture, tasks.py),
tokenized with `cfg.data.tokenizer` or the task's own vocabulary.

Pipeline: each task is tokenized once into an ArrayRecord cache (cache.py). Its examples are cut
into pieces of at most T tokens (text only; a chat example longer than T is an error), the piece
table is split across processes (`process_index::process_count`: disjoint, union = all), shuffled
per epoch and repeated; tasks are mixed by rate (grain `MapDataset.mix`), packed first-fit into
rows of T (grain `FirstFitPackIterDataset`, explicit segment ids; token id 0 is an ordinary
token), and batched. The last token of a piece cut from a longer document keeps the document's
next token as its target. Nothing derives masks from token values.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource

from glm_jax.config import Config, ConfigError
from glm_jax.data import cache as cache_lib
from glm_jax.data import tasks as tasks_lib
from glm_jax.data.errors import DataError
from glm_jax.data.tokenizer import load_tokenizer

FEATURES = ("tokens", "targets", "positions", "segment_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class TaskStream:
    """One task of the mixture, cached: its piece table [P, 3] = (example, start, end)."""

    cached: cache_lib.CachedTask
    rate: float
    pieces: np.ndarray
    vocab: object  # the seqio.Vocabulary the cache was tokenized with


def piece_table(cached: cache_lib.CachedTask, seq_len: int) -> np.ndarray:
    """[P, 3] int64 (example, start, end): every example cut into consecutive pieces of <= seq_len."""
    lengths = cached.lengths
    if not cached.splittable and lengths.max() > seq_len:
        i = int(np.argmax(lengths > seq_len))
        raise ConfigError("train.seq_len", f"{seq_len} is shorter than example {i} of task {cached.name!r} "
                          f"({int(lengths[i])} tokens; the longest is {int(lengths.max())}); "
                          f"its examples are never split: raise train.seq_len or drop the long examples")
    counts = -(-lengths // seq_len)
    example = np.repeat(np.arange(len(lengths)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    start = (np.arange(len(example)) - first) * seq_len
    end = np.minimum(start + seq_len, lengths[example])
    return np.stack([example, start, end], axis=1)


class _ReadPiece:
    """piece (example, start, end) -> {tokens, targets, loss_mask} of length end - start."""

    def __init__(self, cached: cache_lib.CachedTask):
        self._cached = cached
        self._source = None

    def __getstate__(self):  # sent to grain worker processes: each opens its own reader
        return {"_cached": self._cached, "_source": None}

    def __call__(self, piece) -> dict:
        if self._source is None:  # opened lazily, in whichever thread/process reads
            self._source = ArrayRecordDataSource(self._cached.path)
        ex, s, e = (int(v) for v in piece)
        ids, label = self._cached.decode(self._source[ex])
        nxt = np.arange(s + 1, e + 1)
        has_next = nxt < len(ids)
        nxt = np.minimum(nxt, len(ids) - 1)
        label = np.ones(len(ids), np.uint8) if label is None else label
        return {"tokens": ids[s:e],
                "targets": np.where(has_next, ids[nxt], 0).astype(np.int32),
                "loss_mask": np.where(has_next, label[nxt], 0).astype(np.float32)}


def _task_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def vocabulary(cfg: Config):
    """The tokenizer a run's data uses: `data.tokenizer` if set, else the mixture's first task's."""
    try:
        if cfg.data.tokenizer:
            return load_tokenizer(cfg.data.tokenizer)
        return tasks_lib.tasks_and_rates(cfg.data.mixture)[0][0].output_features["targets"].vocabulary
    except DataError as e:
        raise ConfigError("data.tokenizer" if cfg.data.tokenizer else "data.mixture", str(e)) from None


def task_streams(cfg: Config) -> list[TaskStream]:
    """Resolves `cfg.data.mixture` + tokenizer, caches each task, and builds its piece table."""
    try:
        resolved = tasks_lib.tasks_and_rates(cfg.data.mixture)
    except DataError as e:
        raise ConfigError("data.mixture", str(e)) from None
    vocab = None
    if cfg.data.tokenizer:
        try:
            vocab = load_tokenizer(cfg.data.tokenizer)
        except DataError as e:
            raise ConfigError("data.tokenizer", str(e)) from None
    streams = []
    for task, rate in resolved:
        if vocab is not None:
            task = tasks_lib.with_vocabulary(task, vocab)
        task_vocab = task.output_features["targets"].vocabulary
        if task_vocab.vocab_size > cfg.model.vocab_size:
            raise ConfigError("model.vocab_size", f"{cfg.model.vocab_size} is smaller than the vocabulary of task "
                              f"{task.name!r} ({task_vocab.vocab_size} ids incl. specials, {task_vocab!r}); "
                              f"raise model.vocab_size or use a smaller data.tokenizer")
        cached = cache_lib.cache_task(task, cache_lib.cache_dir_for(cfg.data.cache_dir))
        streams.append(TaskStream(cached, rate, piece_table(cached, cfg.train.seq_len), task_vocab))
    return streams


def examples(cfg: Config, streams: list[TaskStream], *, process_index: int, process_count: int,
             num_epochs: int | None = None, shuffle: bool = True) -> grain.MapDataset:
    """This process's examples ({tokens, targets, loss_mask}, variable length), tasks mixed by rate."""
    per_task = []
    for i, st in enumerate(streams):
        ds = grain.MapDataset.source(st.pieces)[process_index::process_count]
        if len(ds) == 0:
            raise ConfigError("data.mixture", f"task {st.cached.name!r} has {len(st.pieces)} pieces, fewer than "
                              f"the {process_count} processes; every process needs at least one")
        if shuffle:
            ds = ds.shuffle(seed=_task_seed(cfg.data.seed, i))  # per-epoch reshuffle: grain seeds by epoch
        ds = ds.repeat(num_epochs).map(_ReadPiece(st.cached))
        per_task.append(ds)
    if len(per_task) == 1:
        return per_task[0]
    return grain.MapDataset.mix(per_task, weights=[st.rate for st in streams])


def _to_contract(row: dict) -> dict:
    return {"tokens": row["tokens"].astype(np.int32), "targets": row["targets"].astype(np.int32),
            "positions": row["tokens_positions"].astype(np.int32),
            "segment_ids": row["tokens_segment_ids"].astype(np.int32),
            "loss_mask": row["loss_mask"].astype(np.float32)}


def pack(ds: grain.MapDataset, cfg: Config, *, num_bins: int) -> grain.IterDataset:
    """Packs examples first-fit into rows of T with explicit segment ids/positions (row dicts)."""
    seq_len = cfg.train.seq_len
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.data.read_threads, prefetch_buffer_size=4 * num_bins))
    packed = grain.experimental.FirstFitPackIterDataset(
        it, length_struct={"tokens": seq_len, "targets": seq_len, "loss_mask": seq_len},
        num_packing_bins=num_bins, seed=cfg.data.seed, shuffle_bins=True,
        meta_features=("targets", "loss_mask"))
    return packed.map(_to_contract)


def _check(cfg: Config, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if cfg.train.batch_size % process_count:
        raise ConfigError("train.batch_size", f"{cfg.train.batch_size} must be divisible by the number of "
                          f"processes ({process_count})")
    if cfg.train.seq_len < 2:
        raise ConfigError("train.seq_len", f"must be >= 2 so a row holds a token and its next-token target, "
                          f"got {cfg.train.seq_len}")
    return cfg.train.batch_size // process_count


def make_dataset(cfg: Config, *, process_index: int, process_count: int) -> grain.IterDataset:
    """The batched per-host stream (see the module docstring); `make_iterator` iterates it."""
    local_batch = _check(cfg, process_index, process_count)
    streams = task_streams(cfg)
    ds = examples(cfg, streams, process_index=process_index, process_count=process_count)
    rows = pack(ds, cfg, num_bins=cfg.data.packing_bins or 4 * local_batch)
    batched = rows.batch(local_batch, drop_remainder=True)
    if cfg.data.num_workers:
        from absl import flags  # grain's workers read absl flags; a library caller may not have parsed any

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        batched = batched.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.data.num_workers))
    return batched


def make_iterator(cfg: Config, *, process_index: int, process_count: int) -> grain.DatasetIterator:
    """This host's infinite, checkpointable iterator of packed batches (contract: module docstring)."""
    return iter(make_dataset(cfg, process_index=process_index, process_count=process_count))
