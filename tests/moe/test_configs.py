"""GLM-4.5 / GLM-4.5-Air configs: parameter counts from shapes alone against transformers' model
of the released sizes, the released (rounded) totals, and config validation."""

import os
import re

import jax.numpy as jnp
import pytest

from glm_jax import config
from glm_jax.config import ConfigError, ModelConfig
from glm_jax.convert import keymap
from glm_jax.model import spec
from tests.conftest import REPO, replace
from tests import hf_reference
from tests.conftest import tiny_moe

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# (main model, active per token without embedding/output, with the MTP layer; the rounded released
# figures: model card total, model card active (both zai-org/GLM-4.5 README), hub safetensors count).
RELEASED = {
    "glm4_5_air": (106_852_251_264, 12_182_615_680, 110_468_824_832, (106, 12, 110)),
    "glm4_5": (352_797_829_024, 32_080_373_664, 358_337_791_296, (355, 32, 358)),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_param_counts_of_released_glm4_5_sizes(name):
    cfg = config.load(os.path.join(REPO, "configs", f"{name}.py")).model
    main, active, with_mtp, (card_total, card_active, hub) = RELEASED[name]
    assert spec.param_count(cfg, mtp=False) == main
    assert spec.param_count(cfg) == with_mtp
    embed_out = 2 * cfg.vocab_size * cfg.hidden_size
    assert spec.active_param_count(cfg) - embed_out == active
    # the released figures, as rounded as they are published
    assert abs(main / 1e9 - card_total) < 3 and int(active / 1e9) == card_active and round(with_mtp / 1e9) == hub
    # transformers' model of the same sizes (meta device: nothing allocated), tensor by tensor;
    # the correction biases are buffers there, parameters (without gradient) here
    with torch.device("meta"):
        theirs = transformers.Glm4MoeForCausalLM(hf_reference.hf_config(cfg))
    biases = sum(b.numel() for n, b in theirs.named_buffers() if n.endswith("e_score_correction_bias"))
    assert sum(p.numel() for p in theirs.parameters()) + biases == main
    ours = {}
    for m in keymap.tensor_maps(cfg, "hf"):
        ours[m.name] = keymap.external_shape(m, cfg)
    for n, p in list(theirs.named_parameters()) + list(theirs.named_buffers()):
        if "rotary_emb" in n:
            continue
        n = re.sub(r"^model\.layers\.\d+\.", "model.layers.{i}.", n)
        if n.endswith("mlp.experts.gate_up_proj"):  # transformers fuses per-expert tensors in memory
            X, two_c, D = p.shape
            assert ours[n.replace("gate_up_proj", "{e}.gate_proj.weight")] == (two_c // 2, D)
        elif n.endswith("mlp.experts.down_proj"):
            assert ours[n.replace("down_proj", "{e}.down_proj.weight")] == tuple(p.shape[1:])
        else:
            assert tuple(p.shape) == ours[n], n


def test_debug_moe_is_small_and_complete():
    cfg = config.load(os.path.join(REPO, "configs", "debug_moe.py"))
    m = cfg.model
    assert m.is_moe and m.mtp_layers == 1 and m.qk_norm and m.moe.first_dense_layers == 1
    assert spec.param_count(m) < 12_000_000
    tree = spec.param_specs(m)
    wi = tree["moe_layers"]["moe"]["experts"]["wi"]["kernel"]
    assert wi.logical_axes == ("layers", "experts", "expert_embed", None, "mlp")
    bf16 = spec.param_specs(replace(m, param_dtype="bfloat16"))["moe_layers"]["moe"]
    assert jnp.dtype(bf16["router"]["kernel"].dtype) == jnp.float32  # routing stays fp32 whatever param_dtype
    assert jnp.dtype(bf16["router"]["bias"].dtype) == jnp.float32
    assert jnp.dtype(bf16["experts"]["wi"]["kernel"].dtype) == jnp.bfloat16
    assert spec.is_stacked(("moe_layers", "moe", "router", "bias")) and not spec.is_stacked(("mtp", "block",
                                                                                              "attn_norm", "scale"))


@pytest.mark.parametrize("field,value,needle", [
    ("model.moe.expert_groups", 3, "divide num_experts=8"),
    ("model.moe.experts_per_token", 9, "[1, num_experts=8]"),
    ("model.moe.first_dense_layers", 3, "at least one layer is MoE"),
    ("model.moe.expert_groups_per_token", 3, "[1, expert_groups=2]"),
    ("run.moe_capacity_factor", 0.5, "0 (dropless) or >= 1"),
    ("run.moe_dispatch_tokens", -1, "0 (all of a device's tokens at once) or > 0"),
])
def test_bad_moe_fields_name_the_field(field, value, needle):
    section, name = field.split(".", 1)
    with pytest.raises(ConfigError, match=re.escape(needle)) as e:
        if section == "run":
            config.RunConfig(**{name: value})
        else:
            tiny_moe(**{name.removeprefix("moe."): value})
    assert e.value.field == field


def test_moe_fields_on_a_dense_model_are_refused():
    with pytest.raises(ConfigError) as e:
        ModelConfig(name="x", vocab_size=8, hidden_size=8, num_layers=2, num_heads=1, kv_groups=1, head_dim=8,
                    ffn_hidden_size=8, moe=config.MoEConfig(first_dense_layers=1))
    assert e.value.field == "model.moe.first_dense_layers"
    with pytest.raises(ConfigError) as e:
        ModelConfig(name="x", vocab_size=8, hidden_size=8, num_layers=2, num_heads=1, kv_groups=1, head_dim=8,
                    ffn_hidden_size=8, mtp_layers=1)
    assert e.value.field == "model.mtp_layers"


def test_expert_mesh_axis_is_validated():
    from glm_jax import sharding
    from glm_jax.train import validation

    cfg = config.Config(model=tiny_moe(), train=config.TrainConfig(seq_len=32, batch_size=8, loss_chunk=32),
                        mesh=config.MeshConfig(expert=4, fsdp=2))
    sizes = sharding.mesh_shape(cfg.mesh, 8)
    assert sizes == {"data": 1, "fsdp": 2, "expert": 4, "sequence": 1, "tensor": 1}
    validation.check_stage(cfg, sizes)
    bad = replace(cfg, mesh=config.MeshConfig(expert=3, fsdp=1))
    with pytest.raises(ConfigError) as e:
        validation.check_stage(bad, sharding.mesh_shape(bad.mesh, 3))
    assert e.value.field == "mesh.expert" and "num_experts=8" in str(e.value)
    dense = replace(cfg, model=replace(cfg.model, moe=config.MoEConfig()))
    with pytest.raises(ConfigError, match="no experts") as e:
        validation.check_stage(dense, sizes)
    assert e.value.field == "mesh.expert"
    with pytest.raises(ConfigError) as e:
        config.MeshConfig(expert=0)
    assert e.value.field == "mesh.expert"
    rounds = replace(cfg, run=replace(cfg.run, moe_dispatch_tokens=8))  # 8 rows x 32 / 8 devices = 32 a device
    validation.check_stage(rounds, sizes)
    with pytest.raises(ConfigError, match="must divide the 32 tokens each device holds") as e:
        validation.check_stage(replace(rounds, run=replace(cfg.run, moe_dispatch_tokens=12)), sizes)
    assert e.value.field == "run.moe_dispatch_tokens"
    validation.check_stage(replace(rounds, run=replace(cfg.run, moe_dispatch_tokens=1024)), sizes)  # one round


# One changed value per MOE_FIELDS entry (each still a valid config of tiny_moe's shape).
MOE_CHANGED = {"rotary_style": "interleaved", "qk_norm": False, "moe.num_experts": 16, "moe.experts_per_token": 3,
               "moe.ffn_hidden_size": 48, "moe.num_shared_experts": 2, "moe.first_dense_layers": 2,
               "moe.expert_groups": 4, "moe.expert_groups_per_token": 2, "moe.norm_topk_prob": False,
               "moe.routed_scaling_factor": 2.5, "mtp_layers": 0}


def test_moe_config_json_round_trips_and_names_each_disagreeing_field():
    from glm_jax.convert import hf_config

    assert [f.attr for f in hf_config.MOE_FIELDS] == list(MOE_CHANGED)
    cfg = tiny_moe(mtp_layers=1)
    written = hf_config.to_hf_config(cfg, "hf", "bfloat16")
    assert written["model_type"] == "glm4_moe" and written["architectures"] == ["Glm4MoeForCausalLM"]
    hf_config.check_against(written, cfg)
    back = hf_config.model_config_from_hf(written, name=cfg.name)
    assert back == replace(cfg, init_std=back.init_std)
    for attr, value in MOE_CHANGED.items():
        with pytest.raises(keymap.ConversionError, match=rf"fix model\.{attr} "):
            if attr.startswith("moe."):
                changed = replace(cfg, moe=replace(cfg.moe, **{attr.removeprefix("moe."): value}))
            else:
                changed = replace(cfg, **{attr: value})
            hf_config.check_against(written, changed)
