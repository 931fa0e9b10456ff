"""Pure-functional GLM-4: a spec tree of parameters and functions over them."""

from glm_jax.model.spec import (ParamSpec, abstract_params, init_params, logical_axes, param_count,
                                param_specs)
from glm_jax.model.transformer import forward, hidden_states

__all__ = ["ParamSpec", "abstract_params", "forward", "hidden_states", "init_params", "logical_axes",
           "param_count", "param_specs"]
