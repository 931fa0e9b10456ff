"""Every test sees 8 simulated CPU devices; this must run before jax is imported."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402,F401  (reads its config from the environment here: the cache below skips this process)
import pytest  # noqa: E402

# The processes tests start (the CLI, workers, launched pods) compile the same debug-model steps
# again and again: they share one persistent compilation cache per test run (both xdist workers),
# every compile cached however short. A size cap turns on the cache's file lock, so a process never
# reads an entry another is still writing. Set after jax is imported so the test processes' own
# compiles (some read memory_analysis) stay fresh. The xdist workers inherit the controller's
# environment, so all find the directory made here.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="glm-jax-tests-jit-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 * 1024 ** 3))


def pytest_sessionfinish(session):
    if _OWN_CACHE and "PYTEST_XDIST_WORKER" not in os.environ:  # the process that made it, after the workers
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def debug_cfg():
    """The debug config (configs/debug.py), validated."""
    from glm_jax import config

    return config.load(os.path.join(REPO, "configs", "debug.py"))


def tiny_model(**overrides):
    """A 2-layer GLM small enough for per-test compiles; fields overridable."""
    from glm_jax.config import ModelConfig

    base = dict(name="tiny", vocab_size=128, hidden_size=64, num_layers=2, num_heads=8, kv_groups=2, head_dim=16,
                ffn_hidden_size=96, rms_norm_eps=1e-5, rope_ratio=3.0, max_seq_len=256)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_moe(**overrides):
    """3 layers (the first dense), 8 experts top-2 in 2 groups (1 per token), a shared expert,
    QK-norm, partial rotate-half rotary, Q/K/V bias: the parity model of the MoE issue. Overrides
    name fields of ModelConfig or of its `moe` section (`moe_ffn_hidden_size` is moe.ffn_hidden_size)."""
    from glm_jax.config import MoEConfig

    moe = dict(num_experts=8, experts_per_token=2, ffn_hidden_size=32, num_shared_experts=1, first_dense_layers=1,
               expert_groups=2, expert_groups_per_token=1, routed_scaling_factor=1.5)
    base = dict(name="tiny_moe", num_layers=3, num_heads=4, kv_groups=2, head_dim=16, hidden_size=64,
                ffn_hidden_size=96, rotary_style="half", qk_norm=True, rope_ratio=3.0)
    moe_fields = {f.name for f in dataclasses.fields(MoEConfig)} - {"ffn_hidden_size"}
    for k, v in overrides.items():
        if k == "moe_ffn_hidden_size":
            moe["ffn_hidden_size"] = v
        else:
            (moe if k in moe_fields else base)[k] = v
    return tiny_model(**base, moe=MoEConfig(**moe))


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


from tests.gcs import gcs_bucket, gcs_server  # noqa: E402,F401  (fixtures: a GCS emulator on loopback)
