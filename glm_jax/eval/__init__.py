"""Evaluations of trained checkpoints (`python -m glm_jax.eval passkey ...`, `python -m glm_jax.eval lm-eval ...`)."""
