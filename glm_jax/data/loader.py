"""The training data stream: a seqio Task/Mixture served by grain as B independent packed row streams.

Contract (the training loop relies on it):

    build_caches(cfg)                       # once (process 0, then a barrier): tokenize what is missing
    it = make_iterator(cfg, rows=[...])     # the global rows this host's devices hold
    batch = next(it)            # dict of numpy arrays, each [len(rows), T]: row i = global row rows[i]
    state = it.get_state()      # {str(row): small JSON-able state} for every row in `rows`
    it.set_state(state)         # takes its own rows' entries (others ignored); also in a new process
    merge_states([s0, s1, ...]) # the global state from every process's get_state(), for set_state

The global batch is B = cfg.train.batch_size rows of T = cfg.train.seq_len, and global row r of
every batch comes from its own deterministic stream r, whatever the number of processes, so a
state saved by N processes (the union of their dicts) resumes on M with exactly the next rows, and
several hosts may read the same row. Fields:
    tokens       int32    input ids
    targets      int32    the next token of the same document (0 where there is none; masked)
    positions    int32    0, 1, ... restarting at each document (piece) in the row
    segment_ids  int32    1, 2, ... per document in the row; 0 = padding
    loss_mask    float32  1 where `targets` counts: not padding, not across documents, and for
                          chat SFT only what the assistant says (chat.py)

Preference pairs (`train.objective=dpo`, every task of the mixture a preference task, preference.py):
a pair is one example (chosen then rejected) packed whole into one row; the k-th pair of a row
has segment ids 2k-1 (chosen) and 2k (rejected), positions restarting at 0 for each, and
loss_mask 1 only on each response. So the two sequences of a pair stay together through
shuffling, packing, sharding (a row is one unit of the batch) and the iterator state.

Streams are infinite: each task repeats, reshuffled per epoch deterministically from
`cfg.data.seed`. Data is `cfg.data.mixture` (a registered seqio Task or Mixture, tasks.py),
tokenized with `cfg.data.tokenizer` or the task's own vocabulary.

Pipeline: each task is tokenized once into an ArrayRecord cache (cache.py). Its examples are cut
into pieces of at most T tokens (text only; a chat example longer than T is an error). Each task's
piece table is shuffled per epoch with a seed of (data.seed, task) and repeated: one global
sequence per task, of which stream r reads positions r, r + B, r + 2B, ... (so the streams split
every epoch disjointly, union = all pieces, and a row's pieces change from epoch to epoch). Tasks
are mixed by rate per stream (grain `MapDataset.mix`), packed first-fit into rows of T (grain
`FirstFitPackIterDataset` with `data.packing_bins` bins per stream and a seed of (data.seed, r),
explicit segment ids; token id 0 is an ordinary token). Shuffling the whole table rather than
each row's share keeps the cost per piece flat in B: grain's index shuffle costs ~1/len (2 ms a
piece at 20 pieces, 25 us at 2,500). The last token of a piece cut from a longer document keeps the
document's next token as its target. Nothing derives masks from token values. The streams of one
iterator run in-process and advance in parallel on `data.read_threads` threads (per host, however
many rows it reads).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Sequence

import grain
import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource

from glm_jax.config import Config, ConfigError
from glm_jax.data import cache as cache_lib
from glm_jax.data import tasks as tasks_lib
from glm_jax.data.errors import DataError
from glm_jax.data.tokenizer import load_tokenizer

FEATURES = ("tokens", "targets", "positions", "segment_ids", "loss_mask")
DEFAULT_PACKING_BINS = 16  # per row stream, when data.packing_bins is 0


@dataclasses.dataclass(frozen=True)
class TaskStream:
    """One task of the mixture, cached: its piece table [P, 3] = (example, start, end)."""

    cached: cache_lib.CachedTask
    rate: float
    pieces: np.ndarray
    vocab: object  # the seqio.Vocabulary the cache was tokenized with
    read: "_ReadPiece"  # piece -> example dict, shared by every row stream


def piece_table(cached: cache_lib.CachedTask, seq_len: int, locations=None) -> np.ndarray:
    """[P, 3] int64 (example, start, end): every example cut into consecutive pieces of <= seq_len.

    `locations` (optional): an iterable of each example's `file:line`, named in the error when an
    example that may not be split (a conversation, a pair) is longer than seq_len."""
    lengths = cached.lengths
    if not cached.splittable and lengths.max() > seq_len:
        long = np.flatnonzero(lengths > seq_len)
        i = int(long[0])
        where = ""
        if locations is not None:
            at = dict(zip(range(len(lengths)), locations))
            where = " at " + ", ".join(f"{at.get(int(j), '?')} ({int(lengths[j])} tokens)" for j in long[:5]) + \
                (f" and {len(long) - 5} more" if len(long) > 5 else "")
        what = "pair (chosen + rejected, kept in one row)" if cached.has_pair_part else "example"
        raise ConfigError("train.seq_len", f"{seq_len} is shorter than {what} {i} of task {cached.name!r} "
                          f"({int(lengths[i])} tokens; the longest is {int(lengths.max())}; {len(long)} too long"
                          f"{where}); its examples are never split: raise train.seq_len or drop the long examples")
    counts = -(-lengths // seq_len)
    example = np.repeat(np.arange(len(lengths)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    start = (np.arange(len(example)) - first) * seq_len
    end = np.minimum(start + seq_len, lengths[example])
    return np.stack([example, start, end], axis=1)


class _ReadPiece:
    """piece (example, start, end) -> {tokens, targets, loss_mask} of length end - start; for a
    preference pair (always whole) also pair_part (0 chosen, 1 rejected) and part_positions."""

    def __init__(self, cached: cache_lib.CachedTask):
        self._cached = cached
        self._source = ArrayRecordDataSource(cached.path)  # one thread-safe reader, shared by all rows

    def __call__(self, piece) -> dict:
        ex, s, e = (int(v) for v in piece)
        ids, label = self._cached.decode(self._source[ex])
        nxt = np.arange(s + 1, e + 1)
        has_next = nxt < len(ids)
        nxt = np.minimum(nxt, len(ids) - 1)
        label = np.ones(len(ids), np.uint8) if label is None else label
        out = {"tokens": ids[s:e],
               "targets": np.where(has_next, ids[nxt], 0).astype(np.int32),
               "loss_mask": np.where(has_next, label[nxt], 0).astype(np.float32)}
        if self._cached.has_pair_part:  # targets across the chosen -> rejected boundary are masked (label 0)
            part = self._cached.pair_part(self._source[ex]).astype(np.int32)
            chosen = int(np.sum(part == 0))
            out["pair_part"] = part
            out["part_positions"] = np.arange(len(ids), dtype=np.int32) - np.where(part == 1, chosen, 0)
        return out


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def vocabulary(cfg: Config):
    """The tokenizer a run's data uses: `data.tokenizer` if set, else the mixture's first task's."""
    try:
        if cfg.data.tokenizer:
            return load_tokenizer(cfg.data.tokenizer)
        return tasks_lib.tasks_and_rates(cfg.data.mixture)[0][0].output_features["targets"].vocabulary
    except DataError as e:
        raise ConfigError("data.tokenizer" if cfg.data.tokenizer else "data.mixture", str(e)) from None


def _tasks(cfg: Config, mixture_field: str = "data.mixture") -> list[tuple[object, float]]:
    """[(seqio task tokenized with the run's vocabulary, rate)] of `data.mixture` (or of the field
    `mixture_field` names, e.g. eval.mixture), vocab size checked."""
    try:
        resolved = tasks_lib.tasks_and_rates(_mixture(cfg, mixture_field))
    except DataError as e:
        raise ConfigError(mixture_field, str(e)) from None
    vocab = vocabulary(cfg) if cfg.data.tokenizer else None
    out = []
    for task, rate in resolved:
        if vocab is not None:
            task = tasks_lib.with_vocabulary(task, vocab)
        task_vocab = task.output_features["targets"].vocabulary
        if task_vocab.vocab_size > cfg.model.vocab_size:
            raise ConfigError("model.vocab_size", f"{cfg.model.vocab_size} is smaller than the vocabulary of task "
                              f"{task.name!r} ({task_vocab.vocab_size} ids incl. specials, {task_vocab!r}); "
                              f"raise model.vocab_size or use a smaller data.tokenizer")
        out.append((task, rate))
    _check_objective(cfg, out)
    return out


def _mixture(cfg: Config, field: str) -> str:
    return cfg.eval.mixture or cfg.data.mixture if field == "eval.mixture" else cfg.data.mixture


def heldout_tasks(cfg: Config) -> list:
    """The tasks `eval.mixture` (default data.mixture) evaluates, each of which must have held-out
    data (a `validation` split); a task without one is a ConfigError naming it."""
    tasks = [task for task, _ in _tasks(cfg, "eval.mixture")]
    for task in tasks:
        if "validation" not in task.source.splits:
            raise ConfigError("eval.mixture", f"task {task.name!r} (of {_mixture(cfg, 'eval.mixture')!r}) has no "
                              f"held-out data: its splits are {list(task.source.splits)}. Register it with "
                              f"validation_files= or heldout_every= (glm_jax/data/tasks.py), evaluate another "
                              f"mixture, or set eval.every_steps=0")
    return tasks


def build_caches(cfg: Config) -> list[str]:
    """Tokenizes every task of `data.mixture` whose cache is missing from `data.cache_dir`, and
    with `eval.every_steps` the validation splits of the tasks it evaluates.

    Call it once per run (process 0, before a barrier) or run `python -m glm_jax.data build`.
    Returns the names of the tasks tokenized now ([] when everything was cached).
    """
    cache_dir = cache_lib.cache_dir_for(cfg.data.cache_dir)
    built = [task.name for task, _ in _tasks(cfg) if cache_lib.build(task, cache_dir)]
    if cfg.eval.every_steps:
        built += [f"{task.name} (validation)" for task in heldout_tasks(cfg)
                  if cache_lib.build(task, cache_dir, "validation")]
    return built


def _stream(cfg: Config, task, rate: float, split: str, build_missing: bool) -> TaskStream:
    cache_dir = cache_lib.cache_dir_for(cfg.data.cache_dir)
    if build_missing:
        cache_lib.build(task, cache_dir, split)
    try:
        cached = cache_lib.open_cached(task, cache_dir, split)
    except cache_lib.CacheMissing as e:
        raise ConfigError("data.cache_dir", f"{e}; build the caches first (`python -m glm_jax.data build "
                          f"--config=...` or `loader.build_caches(cfg)` on one process before the "
                          f"others open them), or point data.cache_dir at a built cache") from None
    locations = task.source.locations(split) if hasattr(task.source, "locations") else None
    return TaskStream(cached, rate, piece_table(cached, cfg.train.seq_len, locations),
                      task.output_features["targets"].vocabulary, _ReadPiece(cached))


def task_streams(cfg: Config, *, build_missing: bool = True) -> list[TaskStream]:
    """Opens each task's cache (tokenizing it first if missing and `build_missing`); piece tables."""
    return [_stream(cfg, task, rate, "train", build_missing) for task, rate in _tasks(cfg)]


def row_examples(cfg: Config, streams: list[TaskStream], row: int, *, num_epochs: int | None = None,
                 shuffle: bool = True) -> grain.MapDataset:
    """Stream `row`'s examples ({tokens, targets, loss_mask}, variable length), tasks mixed by rate.

    Positions row, row + B, ... of each task's repeated global sequence: a task with fewer pieces
    than B rows still feeds every row (from later epochs); with `num_epochs` such a row may be empty.
    """
    per_task = []
    for i, st in enumerate(streams):
        ds = grain.MapDataset.source(st.pieces)
        if shuffle:  # the whole table, reshuffled per epoch (grain seeds by epoch)
            ds = ds.shuffle(seed=_seed(cfg.data.seed, i))
        per_task.append(ds.repeat(num_epochs)[row::cfg.train.batch_size].map(st.read))
    if len(per_task) == 1:
        return per_task[0]
    return grain.MapDataset.mix(per_task, weights=[st.rate for st in streams])


def _to_contract(row: dict) -> dict:
    segments, positions = row["tokens_segment_ids"], row["tokens_positions"]
    if "pair_part" in row:  # the k-th packed pair -> segments 2k-1 (chosen), 2k (rejected)
        segments = np.where(segments > 0, 2 * segments - 1 + row["pair_part"], 0)
        positions = row["part_positions"]
    return {"tokens": row["tokens"].astype(np.int32), "targets": row["targets"].astype(np.int32),
            "positions": positions.astype(np.int32), "segment_ids": segments.astype(np.int32),
            "loss_mask": row["loss_mask"].astype(np.float32)}


def pack(ds: grain.MapDataset, cfg: Config, row: int, *, pairs: bool = False) -> grain.IterDataset:
    """Packs stream `row`'s examples first-fit into rows of T (dicts of [T] arrays, the contract's
    fields); `pairs`: the examples are preference pairs (module docstring)."""
    seq_len = cfg.train.seq_len
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))  # read in the iterator's own thread
    meta = ("targets", "loss_mask", *(("pair_part", "part_positions") if pairs else ()))
    packed = grain.experimental.FirstFitPackIterDataset(
        it, length_struct={"tokens": seq_len, **{k: seq_len for k in meta}},
        num_packing_bins=cfg.data.packing_bins or DEFAULT_PACKING_BINS, seed=_seed(cfg.data.seed, row),
        shuffle_bins=True, meta_features=meta)
    return packed.map(_to_contract)


def _check_objective(cfg: Config, tasks: list) -> None:
    """`train.objective` and the data must agree: dpo needs preference pairs, lm refuses them."""
    kinds = {task.name: tasks_lib.task_kind(task) == "preference" for task, _ in tasks}
    if cfg.train.objective == "dpo" and not all(kinds.values()):
        raise ConfigError("data.mixture", f"{cfg.data.mixture!r}: train.objective=dpo needs preference pairs, but "
                          f"task(s) {sorted(k for k, v in kinds.items() if not v)} are not preference tasks "
                          f"(register_preference_task; e.g. bundled_prefs)")
    if cfg.train.objective != "dpo" and any(kinds.values()):
        raise ConfigError("train.objective", f"{cfg.train.objective!r} trains on every labelled token, but data.mixture "
                          f"{cfg.data.mixture!r} holds preference pairs ({sorted(k for k, v in kinds.items() if v)}): "
                          f"set train.objective=dpo, or use a chat task for SFT")


class RowsIterator(grain.DatasetIterator):
    """Batches of the given global rows: row i of each batch is the next row of stream rows[i].

    A grain DatasetIterator (its orbax checkpoint handler works too) whose parents are the
    per-row stream iterators, advanced in parallel on `threads` threads.
    """

    def __init__(self, rows: Sequence[int], row_iterators: Sequence[grain.DatasetIterator], threads: int):
        super().__init__(list(row_iterators))
        self._rows = [int(r) for r in rows]
        self._pool = (concurrent.futures.ThreadPoolExecutor(min(threads, len(rows)), "glm-data")
                      if threads > 1 and len(rows) > 1 else None)

    @property
    def rows(self) -> list[int]:
        return list(self._rows)

    def __next__(self) -> dict:
        if self._pool is None:
            got = [next(it) for it in self._parents]
        else:
            got = list(self._pool.map(next, self._parents))
        return {k: np.stack([g[k] for g in got]) for k in FEATURES}

    def get_state(self) -> dict:
        return {str(r): it.get_state() for r, it in zip(self._rows, self._parents)}

    def set_state(self, state: dict) -> None:
        missing = [r for r in self._rows if str(r) not in state]
        if missing:
            raise ValueError(f"the data state has no entry for rows {missing} (it holds rows "
                             f"{sorted(state, key=lambda k: int(k) if k.isdigit() else -1)}): it was saved by a "
                             f"run with another train.batch_size or from an incomplete set of processes; "
                             f"resume with the saving run's train.batch_size and all its processes' states")
        for r, it in zip(self._rows, self._parents):
            it.set_state(state[str(r)])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        super().close()


def merge_states(states: Sequence[dict]) -> dict:
    """The global data state from every process's `get_state()` (what `set_state` takes on any process count).

    A row read by several processes must have the same state in each (they read the same stream).
    """
    merged: dict = {}
    for state in states:
        for row, st in state.items():
            if row in merged and merged[row] != st:
                raise ValueError(f"two processes saved different states for data row {row} ({merged[row]} vs "
                                 f"{st}): they were not at the same step; restore from one checkpoint step")
            merged[row] = st
    return merged


def _check(cfg: Config, rows: Sequence[int]) -> None:
    if cfg.train.seq_len < 2:
        raise ConfigError("train.seq_len", f"must be >= 2 so a row holds a token and its next-token target, "
                          f"got {cfg.train.seq_len}")
    if cfg.data.num_workers:
        raise ConfigError("data.num_workers", f"{cfg.data.num_workers}: the row streams run in this process "
                          f"(spread over data.read_threads threads); worker processes are not supported: set 0")
    bad = [r for r in rows if not 0 <= int(r) < cfg.train.batch_size]
    if not len(rows) or bad or len(set(int(r) for r in rows)) != len(rows):
        raise ValueError(f"rows={list(rows)} must be distinct global row indices in [0, train.batch_size="
                         f"{cfg.train.batch_size}), at least one")


def make_iterator(cfg: Config, *, rows: Sequence[int], build_missing: bool = True) -> RowsIterator:
    """The infinite, checkpointable iterator of the global rows `rows` (contract: module docstring).

    `build_missing=False` (several processes, after `build_caches` and a barrier) only opens the
    caches: a missing one is an error naming data.cache_dir instead of a tokenization per host.
    """
    _check(cfg, rows)
    streams = task_streams(cfg, build_missing=build_missing)
    pairs = cfg.train.objective == "dpo"
    its = [iter(pack(row_examples(cfg, streams, int(r)), cfg, int(r), pairs=pairs)) for r in rows]
    return RowsIterator(rows, its, cfg.data.read_threads)


def _packed_once(cfg: Config, streams: list[TaskStream]):
    """The streams' examples once, in file order, packed into rows (an iterator of [T] dicts)."""
    one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=1))
    return iter(pack(row_examples(one, streams, 0, num_epochs=1, shuffle=False), one, 0,
                     pairs=cfg.train.objective == "dpo"))


def epoch_rows(cfg: Config, *, build_missing: bool = True) -> dict[str, np.ndarray]:
    """Every example of `data.mixture` once, in file order, packed into rows: dicts of [N, T]
    arrays (the contract's fields), e.g. to evaluate on a held-out set. Not checkpointable."""
    rows = list(_packed_once(cfg, task_streams(cfg, build_missing=build_missing)))
    return {k: np.stack([r[k] for r in rows]) for k in FEATURES}


def heldout_batches(cfg: Config, *, rows: Sequence[int], build_missing: bool = True) -> dict[str, list[dict]]:
    """{task: [batch, ...]} of every task `eval.mixture` evaluates: its validation split once, in
    file order, packed into rows of train.seq_len, at most `eval.batches` batches of
    train.batch_size rows (the last one topped up with empty rows: loss_mask 0). Each batch holds
    this host's global rows `rows` ([len(rows), T] arrays); every host packs the same rows, so any
    host count sees the same held-out set."""
    B, out = cfg.train.batch_size, {}
    for task in heldout_tasks(cfg):
        packed = _packed_once(cfg, [_stream(cfg, task, 1.0, "validation", build_missing)])
        got = [r for _, r in zip(range(cfg.eval.batches * B), packed)]
        empty = {k: np.zeros_like(v) for k, v in got[0].items()}
        got += [empty] * (-len(got) % B)
        out[task.name] = [{k: np.stack([got[b * B + int(r)][k] for r in rows]) for k in FEATURES}
                          for b in range(len(got) // B)]
    return out
