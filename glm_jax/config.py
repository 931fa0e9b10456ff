"""One config tree, validated once.

`configs/*.py` are ml-collections files with `get_config(arg)`. Their ConfigDict starts from
`default_config_dict()` (built from the dataclass defaults below, so every field is declared
exactly once) and is turned into frozen, typed dataclasses by `from_config_dict`. Every bad value
fails there, before any compile, with a `ConfigError` naming the field and what would be valid.
Derived values (rope theta, rotary dims, kv heads) are properties computed here and nowhere else.

Stages: `stage_order` lists stage names; `stages.<name>` holds that stage's overrides
(e.g. `{"train": {"seq_len": 32768}, "model": {"rope_ratio": 500}}`). `resolve_stages`
returns one fully validated `Config` per stage, each overriding the previous one.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import os
import typing
from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what would be valid."""

    def __init__(self, field: str, message: str):
        super().__init__(f"config field `{field}`: {message}")
        self.field = field


_DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("reference", "flash", "splash", "dot_product")
MOE_MATMULS = ("ragged_dot", "megablox")  # glm_jax.kernels.grouped_matmul
REMAT_POLICIES = ("none", "full", "save_dots", "save_attn_mlp_out")
ROTARY_STYLES = ("interleaved", "half")  # GLM-4 pairs (2i, 2i+1); Glm4Moe (GLM-4.5) pairs (i, i + R/2)
OBJECTIVES = ("lm", "dpo")  # train.objective: next-token cross-entropy (pre-training, SFT) or DPO on pairs
DPO_LOSSES = ("sigmoid", "ipo", "robust")


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)


# Sections a resumed run may change in full: how it runs, on which devices, how often it saves.
RESUMABLE_SECTIONS = ("run", "mesh", "checkpoint", "eval")


def _resumable(default):
    """A field of another section that a resumed run may change (steps to go, logging, readers)."""
    return dataclasses.field(default=default, metadata={"resumable": True})


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Mixture of experts (GLM-4.5 / GLM-4.5-Air, transformers' Glm4Moe); num_experts=0 is a dense
    model. Letters: X routed experts, k experts a token, C each expert's ffn."""

    num_experts: int = 0  # X, routed experts per MoE layer (`n_routed_experts`)
    experts_per_token: int = 0  # k (`num_experts_per_tok`)
    ffn_hidden_size: int = 0  # C, each routed / shared expert's ffn (`moe_intermediate_size`)
    num_shared_experts: int = 0  # always-on experts of C each, fused into one (`n_shared_experts`)
    first_dense_layers: int = 0  # leading layers with a dense MLP of model.ffn_hidden_size (`first_k_dense_replace`)
    expert_groups: int = 1  # experts split into this many groups (`n_group`) ...
    expert_groups_per_token: int = 1  # ... of which each token may use the best this many (`topk_group`)
    norm_topk_prob: bool = True  # renormalize the k routing weights to sum to 1
    routed_scaling_factor: float = 1.0  # routed output scale (GLM-4.5: 2.5)

    def check(self, num_layers: int) -> None:
        """Called by ModelConfig, which knows the layer count."""
        _require(self.num_experts >= 0, "model.moe.num_experts", f"must be >= 0 (0 = dense), got {self.num_experts}")
        if not self.num_experts:
            for f in ("first_dense_layers", "num_shared_experts", "experts_per_token", "ffn_hidden_size"):
                _require(getattr(self, f) == 0, f"model.moe.{f}",
                         f"is {getattr(self, f)} but model.moe.num_experts=0 (a dense model); set num_experts or leave it 0")
            return
        E, k, G = self.num_experts, self.experts_per_token, self.expert_groups
        _require(0 < k <= E, "model.moe.experts_per_token", f"must be in [1, num_experts={E}], got {k}")
        _require(self.ffn_hidden_size > 0, "model.moe.ffn_hidden_size", f"must be > 0, got {self.ffn_hidden_size}")
        _require(self.num_shared_experts >= 0, "model.moe.num_shared_experts",
                 f"must be >= 0, got {self.num_shared_experts}")
        _require(0 <= self.first_dense_layers < num_layers, "model.moe.first_dense_layers",
                 f"must be in [0, model.num_layers={num_layers}) so that at least one layer is MoE, "
                 f"got {self.first_dense_layers}")
        _require(G >= 1 and E % G == 0 and E // G >= 2, "model.moe.expert_groups",
                 f"must divide num_experts={E} into groups of >= 2 experts (a group scores by its top 2), "
                 f"got {G}; valid: {[g for g in range(1, E // 2 + 1) if E % g == 0]}")
        _require(1 <= self.expert_groups_per_token <= G, "model.moe.expert_groups_per_token",
                 f"must be in [1, expert_groups={G}], got {self.expert_groups_per_token}")
        _require(self.expert_groups_per_token * (E // G) >= k, "model.moe.expert_groups_per_token",
                 f"{self.expert_groups_per_token} groups of {E // G} experts hold fewer than experts_per_token={k}")
        _require(self.routed_scaling_factor > 0, "model.moe.routed_scaling_factor",
                 f"must be > 0, got {self.routed_scaling_factor}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture: what a checkpoint is and what conversion must match. One sub-config per
    architectural feature (`moe`). How the model runs is `RunConfig`.

    Letters used across the model: D hidden, H heads, K kv heads, E head dim, F ffn, V vocab, L layers."""

    name: str = "unnamed"
    vocab_size: int = 0  # V (padded vocabulary, as in the released checkpoints)
    hidden_size: int = 0  # D
    num_layers: int = 0  # L
    num_heads: int = 0  # H
    kv_groups: int = 0  # GLM's `multi_query_group_num`: the number of K/V heads
    head_dim: int = 0  # E (GLM's `kv_channels`)
    ffn_hidden_size: int = 0  # F
    rms_norm_eps: float = 1e-5
    rope_ratio: float = 1.0  # rope theta = 10000 x rope_ratio
    rotary_fraction: float = 0.5  # rotary on the first fraction of each head's dims
    max_seq_len: int = 8192
    qkv_bias: bool = True
    post_norms: bool = False  # GLM-4-0414: RMSNorm on the attention and MLP outputs before each residual add
    rotary_style: str = "interleaved"  # one of ROTARY_STYLES: GLM-4 "interleaved", GLM-4.5 (Glm4Moe) "half"
    qk_norm: bool = False  # GLM-4.5: RMSNorm over each head's dims of Q and K before rotary (`use_qk_norm`)
    moe: MoEConfig = MoEConfig()
    mtp_layers: int = 0  # multi-token prediction modules after the last layer (`num_nextn_predict_layers`, 0 or 1)
    param_dtype: str = "float32"  # what the parameters (and the optimizer's moments) are stored in
    init_std: float = 0.02

    def __post_init__(self):
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "kv_groups",
                  "head_dim", "ffn_hidden_size", "max_seq_len"):
            _require(getattr(self, f) > 0, f"model.{f}", f"must be a positive integer, got {getattr(self, f)}")
        _require(self.num_heads % self.kv_groups == 0, "model.kv_groups",
                 f"num_heads={self.num_heads} must be divisible by kv_groups={self.kv_groups}; "
                 f"valid kv_groups: {[g for g in range(1, self.num_heads + 1) if self.num_heads % g == 0]}")
        _require(self.rms_norm_eps > 0, "model.rms_norm_eps", f"must be > 0, got {self.rms_norm_eps}")
        _require(self.rope_ratio > 0, "model.rope_ratio", f"must be > 0, got {self.rope_ratio}")
        _require(0 < self.rotary_fraction <= 1, "model.rotary_fraction",
                 f"must be in (0, 1], got {self.rotary_fraction}")
        rot = self.head_dim * self.rotary_fraction
        _require(rot == int(rot) and int(rot) % 2 == 0, "model.rotary_fraction",
                 f"head_dim x rotary_fraction = {rot} must be an even integer (rotary acts on pairs)")
        _require(self.param_dtype in _DTYPES, "model.param_dtype", f"must be one of {_DTYPES}, got {self.param_dtype!r}")
        _require(self.init_std > 0, "model.init_std", f"must be > 0, got {self.init_std}")
        _require(self.rotary_style in ROTARY_STYLES, "model.rotary_style",
                 f"must be one of {ROTARY_STYLES}, got {self.rotary_style!r}")
        self.moe.check(self.num_layers)
        _require(self.mtp_layers in (0, 1), "model.mtp_layers", f"must be 0 or 1 (the released GLM-4.5 models have "
                 f"one MTP layer), got {self.mtp_layers}")
        _require(not self.mtp_layers or self.is_moe, "model.mtp_layers",
                 "the MTP module is GLM-4.5's (a MoE model); set model.moe.num_experts or leave mtp_layers 0")

    # Derived fields: computed here and nowhere else.
    @property
    def rope_theta(self) -> float:
        return 10000.0 * self.rope_ratio

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    @property
    def num_kv_heads(self) -> int:
        return self.kv_groups

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.kv_groups

    @property
    def is_moe(self) -> bool:
        return self.moe.num_experts > 0

    @property
    def num_dense_layers(self) -> int:
        """Layers with a dense MLP: all of them in a dense model, the first `moe.first_dense_layers` in a MoE one."""
        return self.moe.first_dense_layers if self.is_moe else self.num_layers

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How the model runs: kernels, blocks, remat, scan, the experts' grouped matmul and dispatch,
    the compute dtype. Nothing here changes a checkpoint's contents, so a resumed run may change
    any of it (attention backends, scan/remat, matmul backends and dispatch rounds compute the same
    numbers up to float rounding; dtype and moe_capacity_factor change them by design)."""

    dtype: str = "float32"  # activation / compute dtype (bf16 on TPU)
    attention: str = "reference"  # one of ATTENTION_BACKENDS
    attention_block_q: int = 512  # flash/splash query block
    attention_block_kv: int = 512  # flash/splash key/value block
    attention_interpret: bool = False  # run flash/splash in Pallas interpret mode even on TPU (always on elsewhere)
    scan_layers: bool = True  # lax.scan over the stacked layers (and MoE dispatch rounds); False unrolls (same numbers)
    remat: str = "none"  # one of REMAT_POLICIES
    moe_matmul: str = "ragged_dot"  # the experts' grouped matmul, one of MOE_MATMULS (megablox: Pallas on TPU)
    moe_dispatch_tokens: int = 0  # mesh.expert > 1: a device's tokens reach the experts this many at a time (0: all)
    moe_capacity_factor: float = 0.0  # 0 = dropless; > 0 drops rows past the capacity (glm_jax.model.experts.capacity)

    def __post_init__(self):
        _require(self.dtype in _DTYPES, "run.dtype", f"must be one of {_DTYPES}, got {self.dtype!r}")
        _require(self.attention in ATTENTION_BACKENDS, "run.attention",
                 f"must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        for f in ("attention_block_q", "attention_block_kv"):
            v = getattr(self, f)
            _require(v > 0 and v % 8 == 0, f"run.{f}", f"must be a positive multiple of 8, got {v}")
            _require(self.attention != "splash" or v % 128 == 0, f"run.{f}",
                     f"splash attention needs a multiple of 128, got {v}")
        _require(self.remat in REMAT_POLICIES, "run.remat", f"must be one of {REMAT_POLICIES}, got {self.remat!r}")
        _require(self.moe_matmul in MOE_MATMULS, "run.moe_matmul",
                 f"must be one of {MOE_MATMULS}, got {self.moe_matmul!r}")
        _require(self.moe_dispatch_tokens >= 0, "run.moe_dispatch_tokens",
                 f"must be 0 (all of a device's tokens at once) or > 0, got {self.moe_dispatch_tokens}")
        _require(self.moe_capacity_factor == 0 or self.moe_capacity_factor >= 1, "run.moe_capacity_factor",
                 f"must be 0 (dropless) or >= 1, got {self.moe_capacity_factor}")

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)


# Fields that moved when the architecture was split from how it runs: old dotted name -> new one.
MOVED_FIELDS = {
    **{f"model.{f}": f"run.{f}" for f in ("dtype", "attention", "attention_block_q", "attention_block_kv",
                                           "attention_interpret", "scan_layers", "remat", "moe_matmul",
                                           "moe_dispatch_tokens", "moe_capacity_factor")},
    **{f"model.{f}": f"model.moe.{f}" for f in ("num_experts", "experts_per_token", "num_shared_experts",
                                                 "first_dense_layers", "expert_groups", "expert_groups_per_token",
                                                 "norm_topk_prob", "routed_scaling_factor")},
    "model.moe_ffn_hidden_size": "model.moe.ffn_hidden_size",
}


def upgrade_recorded(d: dict) -> dict:
    """A config dict recorded by an older glm-jax (a workdir's config.json) with its moved fields
    in their new places; what a user types still gets `_moved`'s error."""
    d = copy.deepcopy(d)
    for old, new in MOVED_FIELDS.items():
        (osec, ofield), (nsec, *npath) = old.split("."), new.split(".")
        if ofield in d.get(osec, {}):
            node = d.setdefault(nsec, {})
            for key in npath[:-1]:
                node = node.setdefault(key, {})
            node[npath[-1]] = d[osec].pop(ofield)
    return d


def _moved(field: str) -> None:
    """Refuses an old field name, naming its new place."""
    bare = field.split(".", 2)[-1] if field.startswith("stages.") else field
    new = MOVED_FIELDS.get(bare)
    if new:
        raise ConfigError(field, f"has moved to `{new}` (the model section holds the architecture only, "
                                 f"`run` how it runs); use --config.{new}=...")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, sequence, tensor); one axis may be -1 = the remaining devices."""

    data: int = 1
    fsdp: int = -1
    sequence: int = 1
    tensor: int = 1
    expert: int = 1  # expert parallelism: routed experts split over it; batch rows too (glm_jax.sharding)

    def __post_init__(self):
        sizes = dataclasses.asdict(self)
        for name, v in sizes.items():
            _require(v == -1 or v >= 1, f"mesh.{name}", f"must be >= 1 or -1 (fill), got {v}")
        _require(sum(v == -1 for v in sizes.values()) <= 1, "mesh",
                 f"at most one axis may be -1, got {sizes}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 512  # T of every batch row
    batch_size: int = 8  # global rows per optimizer step (all hosts, all micro-batches)
    grad_accum: int = 1  # micro-batches per optimizer step
    steps: int = _resumable(100)
    lr: float = 3e-4
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    end_lr_ratio: float = 0.1  # final lr = lr x end_lr_ratio
    weight_decay: float = 0.1  # never applied to norms and biases
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    z_loss: float = 0.0  # weight of log(Z)^2
    mtp_loss_weight: float = 0.3  # weight of the multi-token-prediction loss (models with model.mtp_layers)
    router_bias_rate: float = 1e-3  # aux-loss-free balancing: per-step nudge of each expert's routing bias
    loss_chunk: int = 512  # sequence positions per cross-entropy chunk (logits [B, chunk, V] at a time)
    loss_weighting: str = "token"  # token | sequence (LongAlign: each packed sequence weighs the same)
    optimizer_state: str = "keep"  # keep | reset: what a stage does with the previous stage's moments
    seed: int = 0
    log_every: int = _resumable(10)
    init_from: str = ""  # params-only checkpoint (train.checkpoint.save_params) the first stage starts from
    peak_tflops: float = _resumable(0.0)  # per-device peak for the MFU estimate; 0 = look up the device kind
    objective: str = "lm"  # lm (cross-entropy under loss_mask: pre-training, SFT) | dpo (preference pairs; see dpo.*)

    def __post_init__(self):
        _require(self.objective in OBJECTIVES, "train.objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        for f in ("seq_len", "batch_size", "grad_accum", "steps"):
            _require(getattr(self, f) >= 1, f"train.{f}", f"must be >= 1, got {getattr(self, f)}")
        _require(self.batch_size % self.grad_accum == 0, "train.grad_accum",
                 f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}")
        _require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.schedule in ("cosine", "linear", "constant"), "train.schedule",
                 f"must be cosine, linear or constant, got {self.schedule!r}")
        _require(0 <= self.end_lr_ratio <= 1, "train.end_lr_ratio", f"must be in [0, 1], got {self.end_lr_ratio}")
        _require(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0, got {self.grad_clip}")
        _require(self.z_loss >= 0, "train.z_loss", f"must be >= 0, got {self.z_loss}")
        _require(self.mtp_loss_weight >= 0, "train.mtp_loss_weight", f"must be >= 0, got {self.mtp_loss_weight}")
        _require(self.router_bias_rate >= 0, "train.router_bias_rate", f"must be >= 0, got {self.router_bias_rate}")
        _require(self.loss_chunk >= 1 and self.seq_len % min(self.loss_chunk, self.seq_len) == 0, "train.loss_chunk",
                 f"must be >= 1 and divide train.seq_len={self.seq_len} (or exceed it), got {self.loss_chunk}")
        _require(self.loss_weighting in ("token", "sequence"), "train.loss_weighting",
                 f"must be token or sequence, got {self.loss_weighting!r}")
        _require(self.optimizer_state in ("keep", "reset"), "train.optimizer_state",
                 f"must be keep or reset, got {self.optimizer_state!r}")
        _require(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        _require(self.peak_tflops >= 0, "train.peak_tflops", f"must be >= 0, got {self.peak_tflops}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 100
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        _require(self.every_steps >= 1, "checkpoint.every_steps", f"must be >= 1, got {self.every_steps}")
        _require(self.keep >= 1, "checkpoint.keep", f"must be >= 1, got {self.keep}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    mixture: str = "bundled_zh_en"  # a registered seqio task or mixture name (glm_jax/data/tasks.py)
    tokenizer: str = ""  # path of a tiktoken-format (GLM-4) or SentencePiece file; "" = the task's own
    seed: int = 0  # shuffling (reshuffled per epoch from it) and bin order
    num_workers: int = _resumable(0)  # must be 0: the row streams run in-process (on read_threads threads)
    cache_dir: str = _resumable("")  # tokenized cache; "" = WORKDIR/data_cache on a pod (gs:// workdir or several processes), else $GLM_JAX_DATA_CACHE or ~/.cache/glm_jax/data
    packing_bins: int = 0  # rows packed at once (first-fit) per row stream; 0 = 16
    read_threads: int = _resumable(2)  # threads advancing this host's row streams (however many rows it reads)

    def __post_init__(self):
        _require(bool(self.mixture), "data.mixture", "must name a registered seqio task or mixture")
        _require(0 <= self.seed < 2**32, "data.seed", f"must be in [0, 2**32), got {self.seed}")
        _require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _require(self.packing_bins >= 0, "data.packing_bins", f"must be >= 0, got {self.packing_bins}")
        _require(self.read_threads >= 1, "data.read_threads", f"must be >= 1, got {self.read_threads}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation while training: every `every_steps` steps and at a stage's last step, the loss and
    perplexity of each task of `mixture` on its validation split (glm_jax/train/evaluate.py), and
    the metric_fns of the seqio tasks `seqio_tasks` (glm_jax/eval/seqio_eval.py), computed on the
    training mesh. It never changes what training computes."""

    every_steps: int = 0  # 0 = no evaluation
    mixture: str = ""  # a registered task or mixture whose tasks have a validation split; "" = data.mixture
    batches: int = 4  # batches of train.batch_size rows per task (all of the split when it holds fewer)
    seqio_tasks: str = ""  # registered seqio tasks / mixtures with metric_fns, comma-separated; "" = none
    seqio_split: str = "validation"  # the split of seqio_tasks evaluated

    def __post_init__(self):
        _require(self.every_steps >= 0, "eval.every_steps", f"must be >= 0 (0 = off), got {self.every_steps}")
        _require(self.batches >= 1, "eval.batches", f"must be >= 1, got {self.batches}")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """Direct preference optimization (read when `train.objective` is "dpo"; glm_jax/train/dpo.py).

    h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)), summed over each
    response's tokens (ipo: averaged per token). Losses: sigmoid -log sigmoid(beta h) (DPO); ipo
    (h - 1 / (2 beta))^2; robust: label-smoothed DPO, ((1 - e) -log sigmoid(beta h) - e -log
    sigmoid(-beta h)) / (1 - 2e) with e = label_smoothing (preference labels flipped with prob. e)."""

    beta: float = 0.1
    loss: str = "sigmoid"  # one of DPO_LOSSES
    label_smoothing: float = 0.0  # robust only: the assumed rate of flipped preference labels, in [0, 0.5)
    # "" = the params the stage starts from (the previous stage's last checkpoint, or train.init_from);
    # or a params-only checkpoint / training workdir (its latest params)
    reference: str = ""

    def __post_init__(self):
        _require(self.beta > 0, "dpo.beta", f"must be > 0, got {self.beta}")
        _require(self.loss in DPO_LOSSES, "dpo.loss", f"must be one of {DPO_LOSSES}, got {self.loss!r}")
        _require(0 <= self.label_smoothing < 0.5, "dpo.label_smoothing",
                 f"must be in [0, 0.5), got {self.label_smoothing}")
        _require(self.label_smoothing == 0 or self.loss == "robust", "dpo.label_smoothing",
                 f"{self.label_smoothing} is only used by dpo.loss=robust (label-smoothed DPO); "
                 f"set dpo.loss=robust or label_smoothing=0 (loss is {self.loss!r})")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig
    run: RunConfig = RunConfig()
    mesh: MeshConfig = MeshConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    data: DataConfig = DataConfig()
    dpo: DPOConfig = DPOConfig()
    eval: EvalConfig = EvalConfig()


_SECTION_TYPES = {"model": ModelConfig, "run": RunConfig, "mesh": MeshConfig, "train": TrainConfig,
                  "checkpoint": CheckpointConfig, "data": DataConfig, "dpo": DPOConfig,
                  "eval": EvalConfig}


def _flat(obj, prefix: str) -> dict[str, Any]:
    """{dotted field name: value} of a config dataclass, sub-configs flattened."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out.update(_flat(v, f"{prefix}.{f.name}") if dataclasses.is_dataclass(v) else {f"{prefix}.{f.name}": v})
    return out


def differences(old, new, section: str | None = None) -> dict[str, tuple[Any, Any]]:
    """{dotted field name: (old value, new value)} of the fields that differ between two `Config`s
    (or two sections, named by `section`)."""
    pairs = [(section, old, new)] if section else [(n, getattr(old, n), getattr(new, n)) for n in _SECTION_TYPES]
    out = {}
    for name, a, b in pairs:
        fa, fb = _flat(a, name), _flat(b, name)
        out.update({k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k]})
    return out


def is_resumable(name: str) -> bool:
    """May a resumed run change this dotted field? All of RESUMABLE_SECTIONS, and the fields
    declared with `_resumable`; never the architecture, the data or the optimization."""
    section, _, rest = name.partition(".")
    if section in RESUMABLE_SECTIONS:
        return True
    cls = _SECTION_TYPES[section]
    *parents, leaf = rest.split(".")
    for p in parents:
        cls = typing.get_type_hints(cls)[p]
    return bool({f.name: f for f in dataclasses.fields(cls)}[leaf].metadata.get("resumable"))


# ---------------------------------------------------------------------------------------------
# ConfigDict <-> dataclasses
# ---------------------------------------------------------------------------------------------

def _fields(cls) -> dict[str, tuple[Any, Any]]:
    """{name: (type, default)} of a config dataclass; a sub-config's type is its dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls)}


def _is_section(typ) -> bool:
    return dataclasses.is_dataclass(typ)


def _defaults(cls) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({name: _defaults(typ) if _is_section(typ) else default
                                      for name, (typ, default) in _fields(cls).items()})


def default_config_dict() -> ml_collections.ConfigDict:
    """A ConfigDict holding every field's default; config files start from it and override."""
    cd = ml_collections.ConfigDict()
    for name, cls in _SECTION_TYPES.items():
        cd[name] = _defaults(cls)
    cd.stage_order = ()
    cd.stages = ml_collections.ConfigDict()
    return cd


def _coerce(value: Any, typ: Any, field: str) -> Any:
    if typ is bool:
        _require(isinstance(value, bool), field, f"must be true/false, got {value!r}")
        return value
    if typ is int:
        _require(isinstance(value, int) and not isinstance(value, bool), field,
                 f"must be an integer, got {value!r}")
        return value
    if typ is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), field,
                 f"must be a number, got {value!r}")
        return float(value)
    if typ is str:
        _require(isinstance(value, str), field, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {typ} for {field}")


def _build_section(cls, values: dict, prefix: str):
    fields = _fields(cls)
    for k in sorted(set(values) - set(fields)):
        _moved(f"{prefix}.{k}")
        raise ConfigError(f"{prefix}.{k}", f"unknown field; valid fields of `{prefix}` are {list(fields)}")
    kwargs = {}
    for k, v in values.items():
        if v is None:
            continue
        typ = fields[k][0]
        if _is_section(typ):
            _require(isinstance(v, (dict, ml_collections.ConfigDict)), f"{prefix}.{k}",
                     f"is a section with fields {list(_fields(typ))}, got {v!r}")
            kwargs[k] = _build_section(typ, _to_dict(v), f"{prefix}.{k}")
        else:
            kwargs[k] = _coerce(v, typ, f"{prefix}.{k}")
    return cls(**kwargs)


def _to_dict(cd) -> dict:
    return cd.to_dict() if isinstance(cd, ml_collections.ConfigDict) else dict(cd)


def from_config_dict(cd) -> Config:
    """Validates a ConfigDict (or nested dict) into a frozen `Config`; stages are ignored here
    (see `resolve_stages`)."""
    d = _to_dict(cd)
    unknown = sorted(set(d) - set(_SECTION_TYPES) - {"stage_order", "stages"})
    _require(not unknown, unknown[0] if unknown else "",
             f"unknown section; valid sections are {sorted(_SECTION_TYPES) + ['stage_order', 'stages']}")
    _require("model" in d, "model", "every config needs a model section")
    sections = {name: _build_section(cls, _to_dict(d.get(name, {})), name)
                for name, cls in _SECTION_TYPES.items()}
    return Config(**sections)


def _merge(base: dict, override: dict, prefix: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        where = f"{prefix}.{k}" if prefix else k
        if k not in out:
            _moved(where)
            raise ConfigError(where, f"unknown field; valid here: {sorted(out)}")
        out[k] = _merge(out[k], v, where) if isinstance(out[k], dict) else v
    return out


def resolve_stages(cd) -> list[tuple[str, Config]]:
    """[(stage name, Config)] in run order; a config without stages is one stage named "main".

    Each stage applies its overrides on top of the previous stage's resolved values, so a
    later stage only states what changes. Every stage is validated before anything runs.
    """
    d = _to_dict(cd)
    order = tuple(d.get("stage_order", ()) or ())
    stages = d.get("stages", {}) or {}
    base = {k: v for k, v in d.items() if k not in ("stage_order", "stages")}
    if not order:
        _require(not stages, "stage_order", f"stages {sorted(stages)} are defined but stage_order is empty")
        return [("main", from_config_dict(base))]
    missing = [s for s in order if s not in stages]
    _require(not missing, "stage_order", f"names stages {missing} that `stages` does not define "
             f"(defined: {sorted(stages)})")
    unused = sorted(set(stages) - set(order))
    _require(not unused, "stages", f"{unused} defined but not listed in stage_order {list(order)}")
    full = from_config_dict(base)  # validates the base, fills defaults
    current = {name: dataclasses.asdict(getattr(full, name)) for name in _SECTION_TYPES}
    out = []
    for name in order:
        current = _merge(current, _to_dict(stages[name]), f"stages.{name}")
        try:
            out.append((name, from_config_dict(current)))
        except ConfigError as e:
            raise ConfigError(f"stages.{name}.{e.field}", str(e).split(": ", 1)[1]) from None
    return out


# ---------------------------------------------------------------------------------------------
# Loading config files
# ---------------------------------------------------------------------------------------------

def parse_config_arg(arg: str | None, defaults: dict, file: str, plans) -> dict:
    """The `key=value,...` argument of a configs/*.py file (`--config=FILE:ARG`) over `defaults`;
    unknown keys and a `model` that is not one of `plans` fail naming what is valid."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in out:
            raise ConfigError("config", f"{file} arg {key!r} unknown; use {', '.join(k + '=...' for k in defaults)}")
        out[key] = value
    if out["model"] not in plans:
        raise ConfigError("config", f"{file} model={out['model']!r}: valid are {sorted(plans)}")
    return out


def load_config_dict(path: str) -> ml_collections.ConfigDict:
    """Runs `get_config(arg)` of a config file; `path` may end in `:arg` (e.g. `long_context.py:model=debug`)."""
    file, _, arg = path.partition(":")
    if not os.path.isfile(file):
        raise ConfigError("config", f"no config file at {file!r}; configs live in configs/*.py")
    spec = importlib.util.spec_from_file_location(f"_glm_config_{abs(hash(file))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError("config", f"{file} defines no get_config(arg)")
    return module.get_config(arg) if arg else module.get_config()


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cd: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `a.b=value` strings (the `--config.a.b=value` form without the prefix)."""
    cd = copy.deepcopy(cd)
    for item in overrides:
        key, sep, text = item.partition("=")
        _require(bool(sep), key, f"override {item!r} must look like section.field=value")
        _moved(key)
        *parents, leaf = key.split(".")
        node = cd
        for p in parents:
            _require(p in node, key, f"unknown section {p!r}; valid: {sorted(node.keys())}")
            node = node[p]
        _require(leaf in node, key, f"unknown field; valid here: {sorted(node.keys())}")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise ConfigError(key, f"is a section; set one of its fields: {sorted(node[leaf].keys())}")
        value = _parse_value(text)
        if isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
        try:
            node[leaf] = value
        except TypeError:
            raise ConfigError(key, f"{text!r} does not fit this field's type "
                              f"({type(node[leaf]).__name__}, e.g. {node[leaf]!r})") from None
    return cd


def load(path: str, overrides: Sequence[str] = ()) -> Config:
    """Loads, overrides and validates a config file: `load("configs/debug.py", ["train.lr=1e-3"])`."""
    return from_config_dict(apply_overrides(load_config_dict(path), overrides))
