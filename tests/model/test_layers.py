"""glm_jax.model.layers: the SwiGLU MLP's hand-written backward pass equals autodiff's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.model.layers import swiglu_mlp


def _plain_mlp(x, wi, wo):
    h = jnp.einsum("btd,dcf->btcf", x, wi)
    return jnp.einsum("btf,fd->btd", jax.nn.silu(h[:, :, 0]) * h[:, :, 1], wo)


def _inputs(dtype):
    kx, ki, ko, kc = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (2, 5, 16), jnp.float32).astype(dtype)
    wi = (0.3 * jax.random.normal(ki, (16, 2, 24), jnp.float32)).astype(dtype)
    wo = (0.3 * jax.random.normal(ko, (24, 16), jnp.float32)).astype(dtype)
    cot = jax.random.normal(kc, (2, 5, 16), jnp.float32)
    return x, wi, wo, cot


@pytest.mark.parametrize("remat", [None, "full", "save_dots"])
def test_swiglu_gradients_equal_autodiff(remat):
    """d/dx, d/dwi, d/dwo of <cot, mlp(x)> match autodiff of the plain formula to 1e-5 (fp32),
    also with the MLP under jax.checkpoint (remat full / save_dots, as the layer scan runs it)."""
    x, wi, wo, cot = _inputs(jnp.float32)
    policy = {"full": None, "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}

    def loss(fn):
        f = (lambda *a: jnp.sum(fn(*a) * cot))
        return jax.checkpoint(f, policy=policy[remat]) if remat else f

    ours = jax.jit(jax.grad(loss(swiglu_mlp), argnums=(0, 1, 2)))(x, wi, wo)
    ref = jax.grad(loss(_plain_mlp), argnums=(0, 1, 2))(x, wi, wo)
    for name, a, b in zip(("dx", "dwi", "dwo"), ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(swiglu_mlp(x, wi, wo), _plain_mlp(x, wi, wo), rtol=1e-6, atol=1e-6)


def test_swiglu_bf16_compute_with_fp32_weights():
    """bf16 activations with fp32 (master) weights: gradients come back fp32 for the weights and
    bf16 for x, within bf16 rounding of autodiff's."""
    x, wi, wo, cot = _inputs(jnp.float32)
    xb = x.astype(jnp.bfloat16)
    plain = lambda x, wi, wo: _plain_mlp(x, wi.astype(x.dtype), wo.astype(x.dtype))
    grads = [jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a).astype(jnp.float32) * cot), argnums=(0, 1, 2))(xb, wi, wo)
             for fn in (swiglu_mlp, plain)]
    assert [g.dtype for g in grads[0]] == [jnp.bfloat16, jnp.float32, jnp.float32]
    for name, a, b in zip(("dx", "dwi", "dwo"), *grads):
        assert a.dtype == b.dtype, name
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=3e-2, atol=3e-2,
                                   err_msg=name)
