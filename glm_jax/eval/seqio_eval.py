"""seqio evaluation: the `metric_fns` of registered seqio Tasks, computed by seqio's own Evaluator
over our sharded scoring and batched decoding.

    python -m glm_jax.eval seqio --workdir=DIR --tasks=bundled_mc,bundled_arith [--module_import=my_tasks]
    --config.eval.seqio_tasks=bundled_mc,bundled_arith     # the same every eval.every_steps while training

    ev = SeqioEvaluation("my_task", "validation", cfg.model, rows=8)
    ev.evaluate(params, cfg.model, run, mesh)                # {"eval/my_task/<metric>": value}

A task (or each task of a mixture) is a T5X user's Task, unchanged: seqio's Evaluator reads its
split once, hands the examples to the two functions below, decodes the predictions with the
task's `targets` vocabulary, applies its `postprocess_fn`, and runs its metric_fns: score metrics
`fn(targets, scores)` and predict metrics `fn(targets, predictions)`. The model reads an example
decoder-only: context = its `inputs` ids (GLM's document separator <|endoftext|> when the task has
no `inputs`), then the `targets` ids.
- score: the sum of log p(target token | everything before it) (glm_jax.eval.scoring: many
  examples packed per row, exact);
- predict: greedy KV-cache decoding from the context, batched (glm_jax.model.sampling), up to as
  many tokens as the split's longest target or an end token (END_TOKENS, else the vocabulary's
  eos), which the prediction does not include.
Every process computes the same numbers. A task must be registered (import the module that
registers it: --module_import, or the config file), have metric_fns of those two kinds and the
split, tokenize within the model's vocabulary, and (with predict metrics) fit each context and
the longest target in the model's context; anything else is a DataError naming the task (and the
example) before the model runs.
"""

from __future__ import annotations

import importlib
import logging

import jax
import numpy as np
import seqio

from glm_jax.config import Config, ConfigError, ModelConfig, RunConfig
from glm_jax.data import eval_tasks  # noqa: F401  (registers bundled_mc, bundled_arith)
from glm_jax.data.errors import DataError
from glm_jax.data.tokenizer import END_TOKENS
from glm_jax.eval import long_context_tasks  # noqa: F401  (registers long_{passkey,multikey,vartrack}_N)
from glm_jax.eval import scoring
from glm_jax.model import sampling


class _NoLoggersWarning(logging.Filter):
    """Results go to the metrics JSONL / the CLI's JSON, not to seqio's loggers: its warning that
    it has none would print at every evaluation."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'logger_cls' is empty" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoLoggersWarning())
_SCORE, _PREDICT = seqio.metrics.ModelOutputType.SCORE, seqio.metrics.ModelOutputType.PREDICTION


class _TaskFeatures(seqio.PassThroughFeatureConverter):
    """The task's own features (unpadded ids) to score/predict: seqio's decoder converters pad with
    id 0, a real token of GLM's vocabulary."""

    TASK_FEATURES = {}
    MODEL_FEATURES = {}
    PACKING_FEATURE_DTYPES = {}
    pack = False


class _UntilEnd(seqio.Vocabulary):
    """A task's vocabulary that decodes ids up to their first end token. seqio stacks predictions
    into one 2-D array, so rows are padded (with eos); GLM's tokenizer would render the padding as
    "<|endoftext|>" text, where SentencePiece's renders eos as nothing."""

    def __init__(self, vocab, end_ids):
        super().__init__(extra_ids=0)
        self.vocab, self.end_ids = vocab, set(end_ids)

    @property
    def eos_id(self):
        return self.vocab.eos_id

    @property
    def unk_id(self):
        return self.vocab.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self.vocab.vocab_size

    def _encode(self, s):
        return self.vocab.encode(s)

    def _encode_tf(self, s):
        return self.vocab.encode_tf(s)

    def _decode_tf(self, ids):
        return self.vocab.decode_tf(ids)

    def _decode(self, ids):
        return self.vocab.decode(ids)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        return self.vocab.decode(ids[:next((k for k, i in enumerate(ids) if i in self.end_ids), len(ids))])


def _decoding_until_end(task: seqio.Task) -> seqio.Task:
    """An unregistered copy of `task` whose `targets` decode with _UntilEnd."""
    features = dict(task.output_features)
    t = features["targets"]
    features["targets"] = seqio.Feature(_UntilEnd(t.vocabulary, _end_ids(t.vocabulary)), add_eos=t.add_eos,
                                        required=t.required, dtype=t.dtype, rank=t.rank)
    return seqio.Task(task.name, source=task.source, output_features=features, preprocessors=task.preprocessors,
                      postprocess_fn=task.postprocess_fn, metric_objs=task.metric_objs)


def import_modules(modules: str) -> None:
    """Imports each comma-separated module (where a user's tasks are registered)."""
    for name in filter(None, (m.strip() for m in modules.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise DataError(f"cannot import module {name!r} (to register seqio tasks): {e}") from None


def resolve(names: str, split: str, vocab_size: int) -> list[seqio.Task]:
    """The tasks of the comma-separated registered tasks / mixtures `names`, each checked."""
    tasks = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            provider = seqio.get_mixture_or_task(name)
        except ValueError:
            raise DataError(f"unknown seqio task or mixture {name!r}; registered tasks: "
                            f"{sorted(seqio.TaskRegistry.names())}. Import the module that registers it "
                            f"(--module_import, or from the config file)") from None
        for task in seqio.get_subtasks(provider):
            kinds = [m.model_output_type for m in task.metric_objs]
            if not kinds:
                raise DataError(f"task {task.name!r} has no metric_fns, so nothing to evaluate; give it score "
                                f"metrics fn(targets, scores) or predict metrics fn(targets, predictions)")
            unsupported = sorted({k.name for k in kinds if k not in (_SCORE, _PREDICT)})
            if unsupported:
                raise DataError(f"task {task.name!r} has metric_fns of kind {unsupported}; glm_jax computes "
                                f"fn(targets, scores) and fn(targets, predictions) metrics")
            if split not in task.splits:
                raise DataError(f"task {task.name!r} has no split {split!r} (its splits: {list(task.splits)}); "
                                f"evaluate another split")
            if "targets" not in task.output_features:
                raise DataError(f"task {task.name!r} has no `targets` feature: the continuation the model scores "
                                f"and predicts")
            vocab = task.output_features["targets"].vocabulary
            if vocab.vocab_size > vocab_size:
                raise DataError(f"task {task.name!r} tokenizes with {vocab!r} ({vocab.vocab_size} ids), more than "
                                f"the model's vocabulary of {vocab_size}")
            tasks.append(task)
    if not tasks:
        raise DataError(f"no seqio task given ({names!r}): name registered tasks or mixtures, comma-separated")
    return tasks


def check_config(cfg: Config, num_processes: int) -> None:
    """`eval.seqio_tasks` names tasks this run can evaluate, else a ConfigError naming the field."""
    if num_processes > 1:
        raise ConfigError("eval.seqio_tasks", f"seqio tasks are evaluated in one process for now ({num_processes} "
                          f"here); evaluate the checkpoints with `python -m glm_jax.eval seqio`, or set "
                          f"eval.seqio_tasks=''")
    try:
        resolve(cfg.eval.seqio_tasks, cfg.eval.seqio_split, cfg.model.vocab_size)
    except DataError as e:
        raise ConfigError("eval.seqio_tasks", str(e)) from None


def _end_ids(vocab) -> list[int]:
    if hasattr(vocab, "special_id"):
        return [vocab.special_id(t) for t in END_TOKENS]
    return [vocab.eos_id]


class SeqioEvaluation:
    """seqio Evaluators for the tasks of `names` on `split`, built once (they cache the examples).

    `rows`: rows per scoring / decoding batch (a multiple of the mesh's batch axes); `max_len`:
    the longest context + continuation (default the model's max_seq_len); `num_examples`: at most
    this many examples from the start of each task's split (seqio's own option; None = all)."""

    def __init__(self, names: str, split: str, cfg: ModelConfig, rows: int, max_len: int | None = None,
                 num_examples: int | None = None):
        self.tasks = resolve(names, split, cfg.vocab_size)
        self.rows, self.max_len = rows, int(max_len or cfg.max_seq_len)
        self.evaluators, self.end_ids, self.max_new, self.examples = {}, {}, {}, {}
        for t in self.tasks:
            ev = seqio.Evaluator(t.name, _TaskFeatures(), eval_split=split, num_examples=num_examples,
                                 async_compute_metrics=False)
            ev._eval_tasks = [_decoding_until_end(t)]  # noqa: SLF001  (the examples it cached stay)
            self.evaluators[t.name] = ev
            self.end_ids[t.name] = _end_ids(t.output_features["targets"].vocabulary)
            examples = self._examples(ev.cached_model_datasets[t.name], t)
            self.examples[t.name] = len(examples)
            self.max_new[t.name] = max(len(x) for _, _, x in examples)  # predictions: up to the longest target
            if _PREDICT in [m.model_output_type for m in t.metric_objs]:
                for i, context, _ in examples:
                    if len(context) + self.max_new[t.name] > self.max_len:
                        raise DataError(f"task {t.name!r} example {i}: its inputs are {len(context)} tokens; with "
                                        f"the split's longest target ({self.max_new[t.name]}) that is more than "
                                        f"the model's context of {self.max_len} tokens")

    def evaluate(self, params: dict, cfg: ModelConfig, run: RunConfig, mesh) -> dict[str, float]:
        """{"eval/<task>/<metric>": value} of every task (params sharded on `mesh`)."""
        out = {}
        for task in self.tasks:
            fns = {"score_fn": lambda ds, t=task: self._score(ds, t, params, cfg, run, mesh),
                   "predict_fn": lambda ds, t=task: self._predict(ds, t, params, cfg, run, mesh)}
            metrics, _ = self.evaluators[task.name].evaluate(compute_metrics=True, **fns)
            for name, value in metrics.result()[task.name].items():
                out[f"eval/{task.name}/{name}"] = float(getattr(value, "value", value))
        return out

    def _examples(self, ds, task) -> list[tuple[int, list[int], list[int]]]:
        """[(index, context ids, target ids)] of the Evaluator's enumerated dataset."""
        separator = self.end_ids[task.name][0]
        out = []
        for i, ex in ds.as_numpy_iterator():
            context = [int(t) for t in ex["inputs"]] if "inputs" in ex else []
            out.append((int(i), context or [separator], [int(t) for t in ex["targets"]]))
        return out

    def _score(self, ds, task, params, cfg, run, mesh) -> list[tuple[int, float]]:
        examples = self._examples(ds, task)
        names = [f"task {task.name!r} example {i}" for i, _, _ in examples]
        logprob, _ = scoring.score(params, cfg, [(c, t) for _, c, t in examples], mesh, self.max_len, self.rows,
                                   names=names, run=run)
        return [(i, float(lp)) for (i, _, _), lp in zip(examples, logprob)]

    def _predict(self, ds, task, params, cfg, run, mesh) -> list[tuple[int, np.ndarray]]:
        examples = sorted(self._examples(ds, task), key=lambda e: (-len(e[1]), e[0]))
        end_ids, max_new = self.end_ids[task.name], self.max_new[task.name]
        out = []
        with jax.set_mesh(mesh):
            for start in range(0, len(examples), self.rows):
                batch = examples[start:start + self.rows]
                prompt_len = scoring.row_length(len(batch[0][1]), self.max_len)
                new = sampling.generate(params, cfg, [c for _, c, _ in batch], max_new, sampling.Sampling(),
                                        stop_ids=end_ids, rows=self.rows, prompt_len=prompt_len, run=run)
                out += [(i, t[:-1] if t and t[-1] in end_ids else t) for (i, _, _), t in zip(batch, new)]
        padded = np.full((len(out), max_new), end_ids[0], np.int32)  # the 2-D array seqio stacks them into
        for row, (_, t) in zip(padded, out):
            row[:len(t)] = t
        return [(i, row) for (i, _), row in zip(out, padded)]
