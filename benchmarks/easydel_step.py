"""EasyDeL's own Trainer step on the model of train_step_vs_hf.py; run by that benchmark in its own venv.

    benchmarks/.venv-easydel/bin/python benchmarks/easydel_step.py '{"vocab": ..., "steps": 3}'

Builds EasyDeL's GlmForCausalLM (fp32 params and compute) and its `Trainer` (AdamW with the same
betas, eps, weight decay, lr and global-norm clip), then times, on one batch of random tokens:
forward = jit of the loss EasyDeL's training_step differentiates (module.compute_loss), fwd+bwd =
jit(value_and_grad) of it, step = the Trainer's compiled sharded_training_step_function. Prints one
JSON line (the last line of stdout). Never imports glm_jax (EasyDeL pins its own jax).
"""

import json
import os
import sys
import time

os.environ.setdefault("EASYDEL_AUTO", "0")  # else its import appends GPU XLA flags that crash jaxlib on CPU
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _time(fn, steps):
    fn()
    fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main():
    a = json.loads(sys.argv[1])
    import easydel as ed
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    cfg = ed.GlmConfig(vocab_size=a["vocab"], hidden_size=a["hidden"], intermediate_size=a["ffn"],
                       num_hidden_layers=a["layers"], num_attention_heads=a["heads"],
                       num_key_value_heads=a["kv_heads"], head_dim=a["head_dim"],
                       partial_rotary_factor=a["rotary_fraction"], rms_norm_eps=a["rms_norm_eps"],
                       max_position_embeddings=a["seq"], attention_bias=True, tie_word_embeddings=False,
                       pad_token_id=None, eos_token_id=None, bos_token_id=None)
    model = ed.GlmForCausalLM(config=cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    args = ed.TrainingArguments(
        save_directory=a["workdir"], total_batch_size=a["batch"], max_length=a["seq"], max_training_steps=1000,
        learning_rate=a["lr"], optimizer="adamw", scheduler="none", weight_decay=a["weight_decay"],
        clip_grad=a["grad_clip"], extra_optimizer_kwargs={"b1": a["b1"], "b2": a["b2"], "eps": a["eps"]},
        do_eval=False, do_last_save=False, save_steps=None, use_wandb=False, report_steps=10_000, log_steps=10_000,
        track_memory=False, shuffle_train_dataset=False, gradient_accumulation_steps=1)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, a["vocab"], size=(a["batch"], a["seq"]), dtype=np.int32)
    from datasets import Dataset  # the Trainer wants a train set; we feed its step function ourselves

    rows = Dataset.from_dict({"input_ids": tok.tolist(), "attention_mask": np.ones_like(tok).tolist()})
    trainer = ed.Trainer(arguments=args, model=model, dataset_train=rows)
    batch = {"input_ids": jnp.asarray(tok), "attention_mask": jnp.ones_like(jnp.asarray(tok)),
             "labels": jnp.asarray(tok)}
    state = trainer.model_state
    step_fn = trainer.sharded_training_step_function
    extra, static = trainer._train_shared_fn_extra_args, trainer._train_shared_fn_static_args
    loss_config = static[0]

    def loss_fn(tree, minibatch):  # as easydel.trainers.trainer._fn.training_step's loss_fn
        module = state.merge(tree)
        call_batch = module.prepare_inputs_for_call(**minibatch)
        labels = call_batch.pop("labels", None)
        outputs, _ = module.compute_loss(labels=labels, loss_config=loss_config, **call_batch)
        return outputs.loss

    fwd = jax.jit(loss_fn)
    fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
    r = {"easydel": ed.__version__, "jax": jax.__version__, "attn_mechanism": str(getattr(cfg, "attn_mechanism", None)),
         "optimizer_kwargs": {k: str(v) for k, v in args.optimizer_kwargs.items()}}
    with trainer.model.mesh:
        r["forward_seconds"] = _time(lambda: jax.block_until_ready(fwd(state.graphstate, batch)), a["steps"])
        r["fwd_bwd_seconds"] = _time(lambda: jax.block_until_ready(fwd_bwd(state.graphstate, batch)), a["steps"])
        box = {"state": state}

        def one():
            box["state"], m = step_fn(box["state"], batch, *extra, *static)
            jax.block_until_ready(m.loss)

        r["step_seconds"] = _time(one, a["steps"])
        r["loss"] = float(box["state"] is not None and fwd(box["state"].graphstate, batch))
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
