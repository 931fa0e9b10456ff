"""glm-jax: GLM-4 in JAX. `from glm_jax import config, model`."""
