"""seqio Tasks and Mixtures: pretraining text, chat SFT, and the bundled mixture.

Registered on import:
    bundled_zh, bundled_en, bundled_code   pretraining text from data/corpus/*.jsonl.gz
    bundled_chat_sft                       chat/tool SFT conversations from data/sft/chat_sft.jsonl
    bundled_prefs, bundled_prefs_heldout   zh/en preference pairs (DPO) from data/preference/{train,heldout}.jsonl
    bundled_zh_en                          mixture: zh 0.45, en 0.35, code 0.20 (the default)
    bundled_sft_mix                        mixture: chat 0.5, zh 0.25, en 0.25
Your own data: `register_text_task(name, "dir/*.jsonl.gz")` (one document per jsonl row, field
`text_key`; or one per .txt file), `register_chat_task(name, files)`, `register_preference_task(name,
files)` (pairs for `train.objective=dpo`, format: preference.py), `register_mixture(name,
[(task, rate), ...])`, then `--config.data.mixture=name`.

Held-out data (the `validation` split, what `eval.every_steps` evaluates): `validation_files=` of
their own, or `heldout_every=n`, which holds every n-th document of the files out of `train`
(training never reads it). The bundled text and chat tasks hold out every HELDOUT_EVERY-th
document; bundled_prefs' validation split is data/preference/heldout.jsonl.

Each Task tokenizes with its output feature `targets`' vocabulary (a `seqio.Vocabulary` from
tokenizer.py) and has a `label_mask` feature (1 = a token training predicts): text -> ids +
`<|endoftext|>`, all labels; chat -> `chat.render` ids, labels only where the assistant speaks;
preference -> `preference.render_pair` (chosen then rejected as one example, labels on the two
responses) with a third feature `pair_part` (0 chosen, 1 rejected).
The loader materializes a Task once into an ArrayRecord cache (cache.py) and serves it
with grain; seqio's feature converters are never used, since they treat token id 0 as padding.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
from typing import Iterator, Sequence

import seqio
import tensorflow as tf

from glm_jax import storage
from glm_jax.data import chat, preference
from glm_jax.data.errors import DataError
from glm_jax.data.paths import DATA_DIR
from glm_jax.data.tokenizer import bundled_tokenizer


HELDOUT_EVERY = 10  # the bundled corpus and chat tasks: every 10th document is held out


def _files(patterns: str | Sequence[str] | None, kind: str) -> tuple[str, ...]:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns or ())
    files = []
    for p in patterns:
        matched = storage.glob(p)
        if not matched:
            raise DataError(f"no file matches {p!r}; give existing .jsonl/.jsonl.gz/.txt/.txt.gz paths or globs")
        files += matched
    for f in files:
        if not f.endswith((".jsonl", ".jsonl.gz", ".txt", ".txt.gz")):
            raise DataError(f"{f}: unsupported file type; use .jsonl, .jsonl.gz, .txt or .txt.gz")
        if kind in ("chat", "preference") and not f.endswith((".jsonl", ".jsonl.gz")):
            raise DataError(f"{f}: {kind} rows must be .jsonl[.gz], one per line")
    return tuple(storage.resolve(f) for f in files)


class DocumentSource(seqio.FunctionDataSource):
    """Documents from files (local paths or gs:// URLs, globs allowed), in sorted file order:
    split `train`, and `validation` when the source has held-out data (`validation_files`, or
    every `heldout_every`-th document of the files, which `train` then skips).

    `.jsonl[.gz]`: one document per line, `text_key` field (chat: the whole row is a conversation).
    `.txt[.gz]`: the whole file is one document. `kind`: text, chat (the row is a conversation)
    or preference (the row is a pair). `splittable`: may a document be cut into several rows
    (text yes; a conversation or a pair never).
    """

    def __init__(self, patterns: str | Sequence[str], *, text_key: str = "text", kind: str = "text",
                 validation_files: str | Sequence[str] | None = None, heldout_every: int = 0):
        if validation_files and heldout_every:
            raise DataError("give held-out data as validation_files or as heldout_every, not both")
        if heldout_every < 0 or heldout_every == 1:
            raise DataError(f"heldout_every={heldout_every}: hold out every n-th document with n >= 2, or 0 for none")
        self.files = _files(patterns, kind)
        self.validation_files = _files(validation_files, kind)
        self.heldout_every = heldout_every
        self.text_key = text_key
        self.kind = kind
        self.splittable = kind == "text"
        has_validation = bool(self.validation_files) or heldout_every > 0
        super().__init__(dataset_fn=self._dataset_fn, splits=("train", "validation") if has_validation else ("train",))

    def fingerprint(self, split: str = "train") -> str:
        h = hashlib.sha256(f"{self.kind}|{self.text_key}|{split}|{self.heldout_every}".encode())
        for f in self._split_files(split):
            size, mtime_ns = storage.stat(f)
            h.update(f"|{f}|{size}|{mtime_ns}".encode())
        return h.hexdigest()[:16]

    def _split_files(self, split: str) -> tuple[str, ...]:
        if split not in self.splits:
            raise DataError(f"split {split!r}: this source has splits {list(self.splits)}")
        return self.validation_files if split == "validation" and self.validation_files else self.files

    def locations(self, split: str = "train") -> Iterator[str]:
        """`file:line` of each document of `split` in order (document i is the i-th one yielded)."""
        for path, lineno, _ in self._lines(split):
            yield f"{path}:{lineno}" if lineno else path

    def _lines(self, split: str = "train") -> Iterator[tuple[str, int, str]]:
        """(file, line number or 0 for a whole .txt file, text) of every non-blank row of `split`."""
        rows = self._all_lines(self._split_files(split))
        if self.heldout_every:
            held = split == "validation"
            rows = (r for i, r in enumerate(rows) if (i % self.heldout_every == self.heldout_every - 1) == held)
        yield from rows

    def _all_lines(self, files) -> Iterator[tuple[str, int, str]]:
        for path in files:
            with storage.open_file(path, "rb") as raw, \
                    io.TextIOWrapper(gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw,
                                     encoding="utf-8") as f:
                if path.endswith((".txt", ".txt.gz")):
                    yield path, 0, f.read()
                    continue
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield path, lineno, line

    def documents(self, split: str = "train") -> Iterator[str]:
        """Each document's text of `split` (chat: the conversation as JSON; preference: the pair
        as JSON), validated; errors name file:line."""
        for path, lineno, text in self._lines(split):
            if not lineno:
                yield text
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e})") from None
            if self.kind == "chat":
                chat.validate(row, where)
                yield json.dumps(row, ensure_ascii=False)
            elif self.kind == "preference":  # rendering errors name the row too
                preference.validate(row, where)
                yield json.dumps({"where": where, "row": row}, ensure_ascii=False)
            elif not isinstance(row, dict) or not isinstance(row.get(self.text_key), str):
                raise DataError(f"{where}: row has no string field {self.text_key!r} "
                                f"(set text_key= to the field holding the document)")
            else:
                yield row[self.text_key]

    def _dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # order is fixed; grain shuffles after caching
        self._split_files(split)  # an unknown split fails here, naming the ones there are
        ds = tf.data.Dataset.from_generator(lambda: self.documents(split), output_signature=tf.TensorSpec((), tf.string))
        return ds.map(lambda s: {"text": s})


def render_chat(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """seqio preprocessor: conversation JSON -> {targets: ids, label_mask: 1 where the assistant speaks}."""
    vocab = output_features["targets"].vocabulary

    def render(s: bytes):
        ids, mask = chat.render(json.loads(s.decode("utf-8")), vocab)
        return ids, mask.astype("int32")

    def fn(ex):
        ids, mask = tf.numpy_function(render, [ex["text"]], (tf.int32, tf.int32), stateful=False)
        return {"targets": tf.ensure_shape(ids, [None]), "label_mask": tf.ensure_shape(mask, [None])}

    return dataset.map(fn)


def render_pairs(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """seqio preprocessor: pair JSON -> {targets: chosen ids + rejected ids, label_mask: 1 on the two
    responses, pair_part: 0 chosen / 1 rejected} (preference.render_pair)."""
    vocab = output_features["targets"].vocabulary

    def render(s: bytes):
        doc = json.loads(s.decode("utf-8"))
        ids, mask, part = preference.render_pair(doc["row"], vocab, doc["where"])
        return ids, mask.astype("int32"), part.astype("int32")

    def fn(ex):
        ids, mask, part = tf.numpy_function(render, [ex["text"]], (tf.int32, tf.int32, tf.int32), stateful=False)
        return {"targets": tf.ensure_shape(ids, [None]), "label_mask": tf.ensure_shape(mask, [None]),
                "pair_part": tf.ensure_shape(part, [None])}

    return dataset.map(fn)


def full_label_mask(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """seqio preprocessor for text: every token is a label (same features as chat, so both mix)."""
    return dataset.map(lambda ex: {**ex, "label_mask": tf.ones_like(ex["targets"])})


def _features(vocab, kind: str) -> dict:
    # Chat ids end in <|endoftext|> already (chat.render); text gets it from seqio's append_eos.
    features = {"targets": seqio.Feature(vocab, add_eos=kind == "text", dtype=tf.int32),
                "label_mask": seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32)}
    if kind == "preference":
        features["pair_part"] = seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32)
    return features


def _preprocessors(kind: str) -> list:
    if kind == "chat":
        return [render_chat]
    if kind == "preference":
        return [render_pairs]
    return [functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            seqio.preprocessors.tokenize, seqio.preprocessors.append_eos, full_label_mask]


def _add_task(name: str, source: DocumentSource, vocab) -> seqio.Task:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, source=source, preprocessors=_preprocessors(source.kind),
                                  output_features=_features(vocab, source.kind), metric_fns=[])


def register_text_task(name: str, files: str | Sequence[str], *, vocabulary=None, text_key: str = "text",
                       validation_files=None, heldout_every: int = 0):
    """Pretraining text from local or gs:// files/globs (.jsonl[.gz] rows with `text_key`, or whole
    .txt[.gz]); held-out data as in the module docstring."""
    return _add_task(name, DocumentSource(files, text_key=text_key, validation_files=validation_files,
                                          heldout_every=heldout_every), vocabulary or bundled_tokenizer())


def register_chat_task(name: str, files: str | Sequence[str], *, vocabulary=None, validation_files=None,
                       heldout_every: int = 0):
    """Chat/tool SFT from .jsonl[.gz] conversations (format: glm_jax/data/chat.py)."""
    return _add_task(name, DocumentSource(files, kind="chat", validation_files=validation_files,
                                          heldout_every=heldout_every), vocabulary or bundled_tokenizer())


def register_preference_task(name: str, files: str | Sequence[str], *, vocabulary=None, validation_files=None,
                             heldout_every: int = 0):
    """DPO preference pairs from .jsonl[.gz] rows (format: glm_jax/data/preference.py)."""
    return _add_task(name, DocumentSource(files, kind="preference", validation_files=validation_files,
                                          heldout_every=heldout_every), vocabulary or bundled_tokenizer())


def task_kind(task: seqio.Task) -> str:
    """text, chat or preference: what a task's examples are (`train.objective=dpo` needs preference)."""
    return getattr(task.source, "kind", "text")


def register_mixture(name: str, tasks_and_rates: Sequence[tuple[str, float]]) -> seqio.Mixture:
    """A mixture sampling each registered task by its rate; unknown names fail here."""
    known = set(seqio.TaskRegistry.names())
    for task, rate in tasks_and_rates:
        if task not in known:
            raise DataError(f"mixture {name!r} names task {task!r}, which is not registered; "
                            f"registered tasks: {sorted(known)}")
        if not rate > 0:
            raise DataError(f"mixture {name!r}: rate of task {task!r} must be > 0, got {rate}")
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, list(tasks_and_rates))


def tasks_and_rates(name: str) -> list[tuple[seqio.Task, float]]:
    """[(task, rate)] of a registered task (rate 1) or mixture; an unknown name raises DataError."""
    if name in seqio.TaskRegistry.names():
        return [(seqio.TaskRegistry.get(name), 1.0)]
    if name in seqio.MixtureRegistry.names():
        mixture = seqio.MixtureRegistry.get(name)
        return [(t, float(mixture.get_rate(t))) for t in mixture.tasks]
    raise DataError(f"unknown task or mixture {name!r}; registered tasks: {sorted(seqio.TaskRegistry.names())}, "
                    f"mixtures: {sorted(seqio.MixtureRegistry.names())}")


def with_vocabulary(task: seqio.Task, vocab) -> seqio.Task:
    """The same task tokenized with `vocab` (unregistered; used for `data.tokenizer`)."""
    if task.output_features["targets"].vocabulary == vocab:
        return task
    features = {k: (f if isinstance(f.vocabulary, seqio.PassThroughVocabulary)
                    else seqio.Feature(vocab, add_eos=f.add_eos, dtype=f.dtype))
                for k, f in task.output_features.items()}
    name = f"{task.name}#{vocab.fingerprint.replace('-', '_')}"  # seqio names allow [\w.:#]
    return seqio.Task(name, source=task.source, preprocessors=task.preprocessors, output_features=features,
                      metric_fns=[])


def _register_bundled() -> None:
    corpus = os.path.join(DATA_DIR, "corpus")
    for lang in ("zh", "en", "code"):
        register_text_task(f"bundled_{lang}", os.path.join(corpus, f"{lang}.jsonl.gz"), heldout_every=HELDOUT_EVERY)
    register_chat_task("bundled_chat_sft", os.path.join(DATA_DIR, "sft", "chat_sft.jsonl"), heldout_every=HELDOUT_EVERY)
    register_preference_task("bundled_prefs", os.path.join(DATA_DIR, "preference", "train.jsonl"),
                             validation_files=os.path.join(DATA_DIR, "preference", "heldout.jsonl"))
    register_preference_task("bundled_prefs_heldout", os.path.join(DATA_DIR, "preference", "heldout.jsonl"))
    register_mixture("bundled_zh_en", [("bundled_zh", 0.45), ("bundled_en", 0.35), ("bundled_code", 0.20)])
    register_mixture("bundled_sft_mix", [("bundled_chat_sft", 0.5), ("bundled_zh", 0.25), ("bundled_en", 0.25)])


_register_bundled()
