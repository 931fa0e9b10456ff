"""Trains the bundled tokenizer on data/corpus/*.jsonl.gz and writes it in GLM-4's format.

    python data/train_tokenizer.py            # -> data/tokenizer/bundled.tiktoken

HF `tokenizers` byte-level BPE with GLM-4's split regex; the learned vocabulary is written as
`base64(token bytes) rank` lines (tiktoken's format, the one GLM-4's `tokenizer.model` uses).
Ranks are the trained ids: the 256 byte tokens, then each merge in the order it was learned.
`NUM_RANKS` + the 10 GLM specials = 4096 = configs/debug.py's vocab_size.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from glm_jax.data.tokenizer import BUNDLED_TOKENIZER, SPLIT_PATTERN  # noqa: E402

NUM_RANKS = 4086


def corpus_texts():
    for name in ("zh", "en", "code"):
        with gzip.open(os.path.join(HERE, "corpus", f"{name}.jsonl.gz"), "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]


def train(num_ranks: int = NUM_RANKS) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=num_ranks, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    return tok


def write_tiktoken(tok: Tokenizer, path: str) -> int:
    # ByteLevel maps each byte to a printable character; invert that map to get the raw bytes.
    byte_of = {ch: b for b, ch in enumerate(_bytes_to_unicode())}
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise RuntimeError("trained ids are not contiguous")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        for token, rank in vocab:
            raw = bytes(byte_of[c] for c in token)
            f.write(f"{base64.b64encode(raw).decode('ascii')} {rank}\n")
    return len(vocab)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable-character table (the one ByteLevel uses), indexed by byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


def main():
    tok = train()
    n = write_tiktoken(tok, BUNDLED_TOKENIZER)
    print(f"wrote {BUNDLED_TOKENIZER}: {n} ranks (+10 GLM specials = {n + 10} ids)")


if __name__ == "__main__":
    main()
