"""A real grain pipeline for the training tests: packed rows over a seeded token array.

Rows follow the loop's batch interface (tokens, targets, positions, segment_ids, loss_mask; see
glm_jax.train.step.BATCH_FIELDS). Each row packs 1-3 documents cut from a fixed random token
stream (token id 0 included) plus padding; rows are shuffled per epoch by grain. Global batch b
is elements b*B .. b*B+B-1 of that shuffled stream: row r of every batch comes from its own
grain iterator (elements r, r+B, ...), whatever process reads it, so the state is per row and
a checkpoint resumes on any process count.
"""

from __future__ import annotations

import grain
import numpy as np

NUM_ROWS = 512


def _row(index: int, seq_len: int, vocab: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, index])
    stream = rng.integers(0, vocab, size=seq_len + 1, dtype=np.int32)
    tokens = np.zeros(seq_len, np.int32)
    targets = np.zeros(seq_len, np.int32)
    positions = np.zeros(seq_len, np.int32)
    segment_ids = np.zeros(seq_len, np.int32)
    loss_mask = np.zeros(seq_len, np.float32)
    used = int(rng.integers(seq_len // 2, seq_len + 1))
    cuts = np.sort(rng.choice(np.arange(2, used - 1), size=int(rng.integers(0, 3)), replace=False))
    bounds = [0, *cuts.tolist(), used]
    for seg, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        doc = stream[a:b + 1]  # b - a tokens and the next one as the last target
        tokens[a:b] = doc[:-1]
        targets[a:b] = doc[1:]
        positions[a:b] = np.arange(b - a)
        segment_ids[a:b] = seg
        loss_mask[a:b - 1] = 1.0  # the document's last token predicts nothing within it
    return {"tokens": tokens, "targets": targets, "positions": positions, "segment_ids": segment_ids,
            "loss_mask": loss_mask}


class RowsIterator:
    """The loop's iterator contract over grain iterators, one per global row."""

    def __init__(self, streams: dict[int, object]):
        self.streams = streams

    def __next__(self) -> dict:
        rows = [next(it) for it in self.streams.values()]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def get_state(self) -> dict:
        return {str(r): it.get_state() for r, it in self.streams.items()}

    def set_state(self, states: dict) -> None:
        for r, it in self.streams.items():
            it.set_state(states[str(r)])


def make_iterator(cfg, *, rows):
    """The `make_iterator(cfg, rows=)` factory the train loop takes."""
    t, vocab = cfg.train, cfg.model.vocab_size
    shuffled = grain.MapDataset.range(NUM_ROWS).shuffle(seed=cfg.data.seed).repeat()
    return RowsIterator({r: iter(shuffled[r::t.batch_size]
                                 .map(lambda i: _row(int(i), t.seq_len, vocab, cfg.data.seed))
                                 .to_iter_dataset()) for r in rows})
