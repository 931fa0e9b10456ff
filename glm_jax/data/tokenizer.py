"""Tokenizers, each a `seqio.Vocabulary` so seqio Tasks use them directly.

- `GLMTokenizer`: the GLM-4 format. A tiktoken-format file (`base64(token bytes) rank` per line,
  ranks 0..N-1; 151,329 of them in the released `tokenizer.model`), the cl100k-style split
  regex, and the 10 special tokens appended after the ranks in `GLM_SPECIAL_TOKENS` order
  (151329..151338 for the released file). The BPE itself is tiktoken's.
- `ChatGLM3Tokenizer`: ChatGLM3's SentencePiece `tokenizer.model` through seqio's
  `SentencePieceVocabulary`, with ChatGLM3's 9 special tokens appended after the pieces.
- `load_tokenizer(path)` picks the class from the file's content; `bundled_tokenizer()` is the
  small GLM-format tokenizer trained on the bundled corpus (data/tokenizer/, see
  data/train_tokenizer.py), used by configs/debug.py.
- A params-only checkpoint made from released weights keeps their tokenizer files in
  `CKPT/tokenizer/` (`checkpoint_tokenizer`); `fits_model` says whether a tokenizer can be the
  one a model's (padded) vocabulary was made for.

Special tokens are only ever produced by name (`special_id`); `encode` of plain text never
yields one, even for text such as "<|user|>". Token id 0 is a real token (seqio's `pad_id` 0 is
not a padding token here; the loader carries explicit masks and never pads with meaning).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf
import tiktoken

from glm_jax import storage
from glm_jax.data.errors import DataError
from glm_jax.data.paths import DATA_DIR

# cl100k-style pre-tokenizer split (GLM-4's `pat_str`).
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM_SPECIAL_TOKENS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                      "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
# Where GLM stops generating: the end of a document, or the turn passing to the user or a tool
# (the eos set of the released generation_config.json; to-hf writes it).
END_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
# ChatGLM3's names for the same roles (its SentencePiece file has no specials; they follow the pieces).
CHATGLM3_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
                           "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
BUNDLED_TOKENIZER = os.path.join(DATA_DIR, "tokenizer", "bundled.tiktoken")

CHECKPOINT_TOKENIZER_DIR = "tokenizer"  # CKPT/tokenizer/: the weights' tokenizer files
# The files of a checkpoint directory that describe its tokenizer (kept with the weights). The
# first two are what `load_tokenizer` reads: GLM-4's tiktoken-format / ChatGLM3's SentencePiece
# `tokenizer.model`, or the tiktoken file under the name our exports give it.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.tiktoken", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json")
# Released padded vocabularies are their tokenizer's ids rounded up by less than this
# (GLM-4: 151,339 ids -> 151,552; ChatGLM3: 64,798 -> 65,024; the debug model: 4,096 -> 4,096).
VOCAB_PADDING = 512


def read_tiktoken_ranks(path: str) -> dict[bytes, int]:
    """Reads a tiktoken-format file into {token bytes: rank}; ranks must be exactly 0..N-1."""
    if not os.path.isfile(path):
        raise DataError(f"tokenizer file {path!r} does not exist; pass a tiktoken-format file "
                        f"(`base64 rank` per line, e.g. GLM-4's tokenizer.model) or a SentencePiece .model")
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
                if len(parts) != 2:
                    raise ValueError
            except (ValueError, IndexError, binascii.Error):
                raise DataError(f"{path}:{lineno}: expected `<base64 token> <rank>`, got "
                                f"{line[:80]!r}") from None
            ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise DataError(f"{path}: ranks must be the distinct integers 0..{len(ranks) - 1}")
    return ranks


def _as_bytes(b) -> bytes:
    return b.item() if isinstance(b, np.ndarray) else b


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class GLMTokenizer(seqio.Vocabulary):
    """GLM-4 tokenizer: tiktoken BPE over a `base64 rank` file + GLM's 10 specials after the ranks.

    ids: [0, num_ranks) byte-level BPE tokens; num_ranks + i = GLM_SPECIAL_TOKENS[i].
    """

    def __init__(self, path: str, special_tokens: Sequence[str] = GLM_SPECIAL_TOKENS):
        super().__init__(extra_ids=0)
        self.path = os.path.abspath(path)
        ranks = read_tiktoken_ranks(self.path)
        self.num_ranks = len(ranks)
        self.specials = {name: self.num_ranks + i for i, name in enumerate(special_tokens)}
        self._id_to_special = {i: name for name, i in self.specials.items()}
        self.fingerprint = f"glm-{_file_digest(self.path)}"
        self._enc = tiktoken.Encoding(name=self.fingerprint, pat_str=SPLIT_PATTERN,
                                      mergeable_ranks=ranks, special_tokens=self.specials)

    def special_id(self, name: str) -> int:
        if name not in self.specials:
            raise DataError(f"{name!r} is not a special token of {self.path}; known: {list(self.specials)}")
        return self.specials[name]

    @property
    def eos_id(self) -> int:
        return self.specials["<|endoftext|>"]

    @property
    def unk_id(self) -> None:
        return None  # byte-level: every string is encodable

    @property
    def _base_vocab_size(self) -> int:
        return self.num_ranks + len(self.specials)

    def _encode(self, s: str) -> list[int]:
        return self._enc.encode_ordinary(s)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many strings at once (tiktoken runs them on its thread pool)."""
        return self._enc.encode_ordinary_batch(list(texts))

    def _decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids], errors="replace")

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        # A py_function: fine before the ArrayRecord cache, never inside a checkpointed iterator.
        ids = tf.numpy_function(lambda b: np.asarray(self._encode(_as_bytes(b).decode("utf-8")), np.int32),
                                [s], tf.int32, stateful=False)
        return tf.ensure_shape(ids, [None])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        text = tf.numpy_function(lambda a: self._decode(a.tolist()).encode("utf-8"), [ids], tf.string,
                                 stateful=False)
        return tf.ensure_shape(text, [])

    def __eq__(self, other) -> bool:
        return isinstance(other, GLMTokenizer) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"GLMTokenizer({self.path!r}, ranks={self.num_ranks}, vocab_size={self.vocab_size})"


class ChatGLM3Tokenizer(seqio.SentencePieceVocabulary):
    """ChatGLM3's SentencePiece tokenizer; its 9 specials follow the pieces (ids n_pieces + i).

    `special_id` also answers GLM-4's names (`<sop>`, `<eop>`, `<|endoftext|>` = the pieces' EOS),
    so chat.render and the tasks work with either tokenizer.
    """

    _GLM4_NAMES = {"<sop>": "sop", "<eop>": "eop"}

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise DataError(f"SentencePiece file {path!r} does not exist")
        super().__init__(path)
        self.path = os.path.abspath(path)
        self.num_pieces = self.tokenizer.get_piece_size()
        self.specials = {name: self.num_pieces + i for i, name in enumerate(CHATGLM3_SPECIAL_TOKENS)}
        self.fingerprint = f"spm-{_file_digest(self.path)}"

    def special_id(self, name: str) -> int:
        if name == "<|endoftext|>":
            return self.eos_id
        name = self._GLM4_NAMES.get(name, name)
        if name not in self.specials:
            raise DataError(f"{name!r} is not a special token of {self.path}; known: {list(self.specials)}")
        return self.specials[name]

    @property
    def _base_vocab_size(self) -> int:
        return self.num_pieces + len(self.specials)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(self._encode(t)) for t in texts]

    def _decode(self, ids) -> str:
        # SentencePiece cannot decode ids past its pieces: render specials by name between runs.
        out, run = [], []
        for i in (int(i) for i in ids):
            if i >= self.num_pieces:
                out.append(self.tokenizer.decode(run) if run else "")
                out.append(CHATGLM3_SPECIAL_TOKENS[i - self.num_pieces])
                run = []
            else:
                run.append(i)
        out.append(self.tokenizer.decode(run) if run else "")
        return "".join(out)


def _local_copy(url: str) -> str:
    """A gs:// tokenizer file as a local file (tiktoken and SentencePiece read local paths): downloaded
    once into ~/.cache/glm_jax/tokenizers/, named by the URL and the object's size and mtime."""
    if not storage.isfile(url):
        raise DataError(f"tokenizer file {url!r} does not exist (set data.tokenizer to an existing file)")
    size, mtime = storage.stat(url)
    key = hashlib.sha256(f"{url}|{size}|{mtime}".encode()).hexdigest()[:16]
    local = os.path.join(os.path.expanduser("~"), ".cache", "glm_jax", "tokenizers", f"{key}-{storage.basename(url)}")
    if not os.path.isfile(local):
        storage.download(url, local)
    return local


def load_tokenizer(path: str):
    """A GLM-format (tiktoken) or SentencePiece tokenizer, chosen from the file's content; `path`
    may be a gs:// URL."""
    if storage.is_url(path):
        path = _local_copy(path)
    if not os.path.isfile(path):
        raise DataError(f"tokenizer file {path!r} does not exist (set data.tokenizer to a tiktoken-format "
                        f"file such as GLM-4's tokenizer.model, a SentencePiece .model, or '' for the "
                        f"task's own tokenizer)")
    with open(path, "rb") as f:
        head = f.readline(200)
    parts = head.split()
    try:
        is_tiktoken = len(parts) == 2 and bool(base64.b64decode(parts[0], validate=True)) and parts[1].isdigit()
    except binascii.Error:
        is_tiktoken = False
    return _cached_glm(os.path.abspath(path)) if is_tiktoken else ChatGLM3Tokenizer(path)


@functools.lru_cache(maxsize=8)
def _cached_glm(path: str) -> GLMTokenizer:
    return GLMTokenizer(path)


def checkpoint_tokenizer(checkpoint_dir: str) -> str | None:
    """The tokenizer file a checkpoint directory keeps in `tokenizer/` (what from-hf copies from
    the released weights), or None when it keeps none."""
    for name in TOKENIZER_FILES[:2]:
        path = storage.join(storage.resolve(checkpoint_dir), CHECKPOINT_TOKENIZER_DIR, name)
        if storage.isfile(path):
            return path
    return None


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's printable-unicode alphabet for the 256 bytes (GPT-2's)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def tiktoken_from_tokenizer_json(src: str, dst: str) -> int:
    """Writes the GLM-format tiktoken file (`base64 rank` per line) that a transformers
    `tokenizer.json` of a GLM-4 tokenizer was made from (what GLM-4-0414 and the -hf checkpoints
    ship instead of `tokenizer.model`); returns the number of ranks.

    Exact for byte-level BPE whose ids are the ranks and whose merges come in rank order (how
    transformers converts tiktoken files); anything else, or specials other than GLM's, raises
    DataError naming the file."""
    import json

    with open(src, encoding="utf-8") as f:
        tok = json.load(f)
    bpe = tok.get("model") or {}
    if bpe.get("type") != "BPE":
        raise DataError(f"{src}: model type {bpe.get('type')!r}, not the byte-level BPE of a GLM-4 tokenizer")
    splits = [p["pattern"].get("Regex") for p in (tok.get("pre_tokenizer") or {}).get("pretokenizers", [])
              if p.get("type") == "Split"]
    if splits != [SPLIT_PATTERN]:
        raise DataError(f"{src}: pre-tokenizer split {splits!r} is not GLM-4's {SPLIT_PATTERN!r}")
    vocab, decode = bpe["vocab"], _byte_decoder()
    specials = sorted((t["id"], t["content"]) for t in tok.get("added_tokens", []) if t.get("special"))
    num_ranks = len(vocab)
    if sorted(vocab.values()) != list(range(num_ranks)):
        raise DataError(f"{src}: BPE ids are not 0..{num_ranks - 1}; not a tiktoken-derived GLM tokenizer")
    named = [name for _, name in specials[:len(GLM_SPECIAL_TOKENS)]]
    if named != list(GLM_SPECIAL_TOKENS) or specials[0][0] != num_ranks:
        raise DataError(f"{src}: specials {named} from id {specials[0][0] if specials else None} are not GLM's "
                        f"{list(GLM_SPECIAL_TOKENS)} from id {num_ranks}")
    merged = [vocab["".join(m) if isinstance(m, list) else m.replace(" ", "")] for m in bpe.get("merges", [])]
    if merged != sorted(merged):
        raise DataError(f"{src}: merges are not in rank order; not a tiktoken-derived GLM tokenizer")
    try:
        lines = sorted((i, bytes(decode[c] for c in token)) for token, i in vocab.items())
    except KeyError as e:
        raise DataError(f"{src}: token with a character {e} outside byte-level BPE's alphabet") from None
    with open(dst, "wb") as f:
        f.writelines(base64.b64encode(b) + b" " + str(i).encode() + b"\n" for i, b in lines)
    return num_ranks


def fits_model(vocab: seqio.Vocabulary, model_vocab_size: int) -> bool:
    """True when `model_vocab_size` is `vocab`'s ids padded by less than VOCAB_PADDING, i.e. a
    model of that vocabulary can have been made for this tokenizer."""
    return vocab.vocab_size <= model_vocab_size < vocab.vocab_size + VOCAB_PADDING


def bundled_tokenizer() -> GLMTokenizer:
    """The small GLM-format tokenizer trained on the bundled corpus (data/tokenizer/bundled.tiktoken)."""
    return _cached_glm(BUNDLED_TOKENIZER)
