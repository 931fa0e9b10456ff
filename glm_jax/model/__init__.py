"""Pure-functional GLM-4: a spec tree of parameters and functions over them."""

from glm_jax.model.spec import (ParamSpec, abstract_params, active_param_count, init_params, logical_axes,
                                param_count, param_specs)
from glm_jax.model.transformer import (forward, hidden_states, hidden_states_and_stats, logits_from_hidden,
                                       output_logits)

__all__ = ["ParamSpec", "abstract_params", "active_param_count", "forward", "hidden_states",
           "hidden_states_and_stats", "init_params", "logits_from_hidden",
           "output_logits", "logical_axes",
           "param_count", "param_specs"]
