"""A T5X user's task module, written with seqio's API only: `user_qa`, short questions with one
score metric and one predict metric, and `user_qa_unscored`, the same data with no metric_fns.
Imported by a config file or `python -m glm_jax.eval seqio --module_import=tests.eval.seqio_user_task`."""

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.tokenizer import bundled_tokenizer

QA = [("Question: 2 + 3 =", " 5"), ("Question: the capital of France is", " Paris"),
      ("问题：一年有几个月？", " 十二"), ("Question: the opposite of hot is", " cold"),
      ("Question: 7 x 6 =", " 42"), ("def add(a, b):", " return a + b")]


def qa(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": [q for q, _ in QA], "targets": [a for _, a in QA]})


def mean_logprob(targets, scores):
    return {"mean_logprob": float(np.mean(scores))}


def match(targets, predictions):
    return {"exact_match": float(np.mean([t == p for t, p in zip(targets, predictions)])),
            "chars": float(np.mean([len(p) for p in predictions]))}


VOCAB = bundled_tokenizer()
FEATURES = {"inputs": seqio.Feature(VOCAB, add_eos=False), "targets": seqio.Feature(VOCAB, add_eos=True)}
for name, fns in (("user_qa", [mean_logprob, match]), ("user_qa_unscored", [])):
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(qa, splits=["validation"]),
                               preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                               output_features=FEATURES, metric_fns=fns)
