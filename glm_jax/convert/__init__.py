"""PyTorch / HuggingFace interop: the declared key map and the `python -m glm_jax.convert` CLI."""
