"""Pure-functional GLM-4: a spec tree of parameters and functions over them."""

from glm_jax.model.spec import (ParamSpec, abstract_params, init_params, logical_axes, param_count,
                                param_specs)
from glm_jax.model.transformer import forward, hidden_states, logits_from_hidden, output_logits

__all__ = ["ParamSpec", "abstract_params", "forward", "hidden_states", "init_params", "logits_from_hidden",
           "output_logits", "logical_axes",
           "param_count", "param_specs"]
