"""Evaluate a training workdir (or a params-only checkpoint).

    python -m glm_jax.eval lm-eval --model_args workdir=DIR[,step=N][,fsdp=4,tensor=2] --tasks bundled_mc \
        [--num_fewshot 2] [--output_path out/ --log_samples] [any other `lm_eval run` flag]

lm-eval: every argument goes to lm-evaluation-harness's own command line (`lm_eval`), with the
model `glm_jax` registered (glm_jax/eval/harness.py; `--model glm_jax` is the default) and the
bundled tasks (`bundled_mc`, `bundled_arith`: data/eval/tasks/) on the include path next to any
`--include_path` given. Results and `--log_samples` files are lm-eval's. Needs the `eval` extra.

    python -m glm_jax.eval passkey --workdir=DIR --lengths=512,1024,2048,4096,8192 --depths=10 \
        [--samples=4] [--step=N] [--out=DIR/eval/passkey] [--tokenizer=FILE]

The tokenizer is the run's (`data.tokenizer`, else its mixture's); `--tokenizer` names a file
instead, for a run whose data tasks were registered by another program (e.g.
benchmarks/long_context.py: `--tokenizer=data/tokenizer/bundled.tiktoken`).

Writes OUT.json and OUT.png (accuracy heatmap, depth x length) and prints a table.

    python -m glm_jax.eval dpo --workdir=DIR --mixture=bundled_prefs_heldout [--step=N] \
        [--reference=CKPT] [--out=DIR/eval/dpo_MIXTURE.json]

dpo: a DPO checkpoint against its frozen reference (the one its stage trained against:
`dpo.reference`, else `train.init_from` for a first stage, else the previous stage's last
checkpoint; `--reference` names another) on every pair of a preference mixture once: mean DPO
loss, preference accuracy, reward margin, rewards and the policy's own accuracy
(glm_jax.train.dpo.evaluate). Writes OUT (JSON) and prints the figures.

    python -m glm_jax.eval seqio --workdir=DIR --tasks=bundled_mc,bundled_arith [--step=N] \
        [--split=validation] [--module_import=my_tasks] [--num_examples=N] [--out=DIR/eval/seqio.json]

seqio: the metric_fns of registered seqio tasks or mixtures, computed by seqio's Evaluator over
our sharded scoring and batched decoding (glm_jax/eval/seqio_eval.py), on a mesh of this host's
devices (fsdp over all of them). `--module_import` imports the modules that register your tasks
(comma-separated); `--num_examples` takes the first N of each split. Writes OUT (JSON: step, split,
examples per task, {task: {metric: value}}) and prints the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from glm_jax.data.paths import DATA_DIR


LM_EVAL_TASKS = os.path.join(DATA_DIR, "eval", "tasks")


def _flag(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """(value of `--name V` / `--name=V`, args without it)."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2:]
        if a.startswith(name + "="):
            return a.split("=", 1)[1], args[:i] + args[i + 1:]
    return None, args


def _merged_tasks_dir(paths: list[str], into: str) -> str:
    """A directory mirroring each of `paths` (file symlinks in real directories, since lm-eval's
    task scan does not enter symlinked directories): lm-eval takes one --include_path."""
    for n, root in enumerate(paths):
        if not os.path.isdir(root):
            raise SystemExit(f"--include_path {root!r} is not a directory")
        for d, _, files in os.walk(root, followlinks=True):
            target = os.path.join(into, str(n), os.path.relpath(d, root))
            os.makedirs(target, exist_ok=True)
            for f in files:
                os.symlink(os.path.abspath(os.path.join(d, f)), os.path.join(target, f))
    return into


def lm_eval_main(args: list[str]) -> int:
    """`lm_eval ARGS` with the glm_jax model registered and the bundled tasks included."""
    try:
        import glm_jax.eval.harness  # noqa: F401  (registers the model `glm_jax`)
        import glm_jax.eval.scoring
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        raise SystemExit(f"lm-eval is not installed ({e}): pip install -e '.[eval]'") from None
    args = list(args)
    if args and args[0] in ("ls", "validate", "run"):
        command, args = args[0], args[1:]
    else:
        command = "run"
    if command == "run" and _flag(args, "--model")[0] is None:
        args = ["--model", "glm_jax", *args]
    user_path, args = _flag(args, "--include_path")
    with tempfile.TemporaryDirectory(prefix="glm_jax-lm_eval-tasks-") as tmp:
        include = _merged_tasks_dir([LM_EVAL_TASKS, user_path], tmp) if user_path else LM_EVAL_TASKS
        old = sys.argv
        sys.argv = ["lm_eval", command, *args, "--include_path", include]
        try:
            cli_evaluate()
        except glm_jax.eval.scoring.RequestError as e:  # a request the model cannot serve: named, nothing run
            print(f"glm_jax.eval lm-eval: {e}", file=sys.stderr)
            return 2
        finally:
            sys.argv = old
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "lm-eval":
        return lm_eval_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m glm_jax.eval", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("lm-eval", add_help=False, help="lm-evaluation-harness with the glm_jax model; every further "
                   "argument is lm_eval's (python -m glm_jax.eval lm-eval --help)")
    pk = sub.add_parser("passkey", help="passkey retrieval across lengths and depths")
    pk.add_argument("--workdir", required=True)
    pk.add_argument("--step", type=int, default=None)
    pk.add_argument("--lengths", default="512,1024,2048")
    pk.add_argument("--depths", type=int, default=10, help="number of evenly spaced depths in [0, 1]")
    pk.add_argument("--samples", type=int, default=4)
    pk.add_argument("--seed", type=int, default=0)
    pk.add_argument("--tokenizer", default="", help="tokenizer file (tiktoken or SentencePiece) to use "
                    "instead of the run's")
    pk.add_argument("--out", default=None, help="output path without extension (default WORKDIR/eval/passkey)")
    pk.add_argument("--verbose", action="store_true", help="show library INFO logging (absl, orbax, TF, XLA)")
    dp = sub.add_parser("dpo", help="a DPO checkpoint against its reference on held-out preference pairs")
    dp.add_argument("--workdir", required=True, help="a training workdir whose checkpoint is a DPO stage's")
    dp.add_argument("--step", type=int, default=None, help="the checkpoint (default: the latest)")
    dp.add_argument("--mixture", required=True, help="a registered preference task or mixture, every pair once "
                    "(e.g. bundled_prefs_heldout)")
    dp.add_argument("--reference", default="", help="reference params (a params checkpoint or workdir) instead of "
                    "the stage's own")
    dp.add_argument("--out", default=None, help="JSON path (default WORKDIR/eval/dpo_MIXTURE.json)")
    dp.add_argument("--verbose", action="store_true", help="show library INFO logging (absl, orbax, TF, XLA)")
    sq = sub.add_parser("seqio", help="the metric_fns of registered seqio tasks (score and predict metrics)")
    sq.add_argument("--workdir", required=True, help="a training workdir or a params-only checkpoint")
    sq.add_argument("--step", type=int, default=None, help="the checkpoint (default: the latest)")
    sq.add_argument("--tasks", required=True, help="registered seqio tasks or mixtures, comma-separated "
                    "(bundled: bundled_mc, bundled_arith)")
    sq.add_argument("--split", default="validation")
    sq.add_argument("--module_import", default="", help="modules that register the tasks, comma-separated")
    sq.add_argument("--num_examples", type=int, default=None, help="at most this many examples from the start "
                    "of each task's split (default: all)")
    sq.add_argument("--out", default=None, help="JSON path (default WORKDIR/eval/seqio.json)")
    sq.add_argument("--verbose", action="store_true", help="show library INFO logging (absl, orbax, TF, XLA)")
    a = p.parse_args(argv)
    if a.command == "dpo":
        return dpo_main(p, a)
    if a.command == "seqio":
        return seqio_main(p, a)
    try:
        lengths = [int(x) for x in a.lengths.split(",")]
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {a.lengths!r}")
    if a.depths < 1 or a.samples < 1:
        p.error("--depths and --samples must be >= 1")
    _, cfg = _checkpoint(p, a)  # the run's config, before reading any weights
    from glm_jax import storage
    from glm_jax.config import ConfigError
    from glm_jax.data.errors import DataError
    from glm_jax.data.loader import vocabulary
    from glm_jax.data.tokenizer import load_tokenizer
    from glm_jax.eval import passkey
    from glm_jax.train.checkpoint import restore_params

    try:
        tokenizer = load_tokenizer(a.tokenizer) if a.tokenizer else vocabulary(cfg)
    except DataError as e:
        p.error(f"--tokenizer: {e}")
    except ConfigError as e:
        p.error(f"{e}\n(the run's tokenizer is unknown in this process: pass --tokenizer=FILE)")
    params, cfg = restore_params(a.workdir, a.step)
    results = passkey.evaluate(params, cfg.model, tokenizer, lengths, a.depths, a.samples, a.seed, run=cfg.run)
    out = a.out or storage.join(storage.resolve(a.workdir), "eval", "passkey")
    passkey.save(results, out + ".json", out + ".png")
    print(f"{'length':>8} " + " ".join(f"{r['depth']:>6.0%}" for r in results["results"] if r["length"] == lengths[0]))
    for n in lengths:
        print(f"{n:>8} " + " ".join(f"{r['accuracy']:>6.2f}" for r in results["results"] if r["length"] == n))
    print(f"wrote {out}.json and {out}.png")
    return 0


def _stage_reference(workdir: str, directory: str) -> tuple[str, int | None]:
    """(checkpoint, step or None for its latest) of the reference the DPO stage whose params are
    at `directory` trained against, as glm_jax.train.loop loads it."""
    from glm_jax import storage
    from glm_jax.train import checkpoint

    stages = checkpoint.read_stages(workdir)
    names = [n for n, _ in stages]
    name = next(n for n in names if directory.startswith(checkpoint.stage_dir(storage.resolve(workdir), n) + "/"))
    i = names.index(name)
    return checkpoint.reference_checkpoint(stages[i][1], storage.resolve(workdir), names[i - 1] if i else None)


def _checkpoint(p: argparse.ArgumentParser, a: argparse.Namespace):
    """(directory, config) of --workdir's checkpoint --step (default the latest), library logging
    quiet unless --verbose; a missing workdir or step is a usage error (exit 2)."""
    from glm_jax import cli, storage
    from glm_jax.train import checkpoint

    cli.quiet_libraries(a.verbose)
    if not storage.isdir(storage.resolve(a.workdir)):
        p.error(f"--workdir {a.workdir!r} does not exist (a local path or gs:// URL)")
    try:
        return checkpoint.locate_params(a.workdir, a.step)
    except (FileNotFoundError, ValueError) as e:
        p.error(f"--workdir / --step: {e}")


def dpo_main(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    directory, cfg = _checkpoint(p, a)
    import dataclasses
    import json

    from glm_jax import storage
    from glm_jax.config import ConfigError
    from glm_jax.data import loader
    from glm_jax.train import checkpoint, dpo

    if a.reference:
        ref_source = (a.reference, None)
    elif cfg.train.objective != "dpo" or checkpoint.is_params_checkpoint(a.workdir):
        p.error(f"{directory} is not a DPO stage's checkpoint (train.objective={cfg.train.objective!r}): pass "
                f"--step of a DPO stage's checkpoint, or --reference=CKPT to compare it with")
    else:
        ref_source = _stage_reference(a.workdir, directory)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, objective="dpo"),
                              data=dataclasses.replace(cfg.data, mixture=a.mixture))
    try:
        rows = loader.epoch_rows(cfg)  # checks the mixture before any weights are read
    except ConfigError as e:
        p.error(f"--mixture {a.mixture!r}: {e}")
    policy, _ = checkpoint.restore_params(a.workdir, a.step)
    try:
        reference, ref_cfg = checkpoint.restore_params(*ref_source)
    except (FileNotFoundError, ValueError) as e:
        p.error(f"the reference {ref_source[0]}: {e}")
    if _shapes(reference) != _shapes(policy):
        p.error(f"the reference {ref_source[0]} holds another model ({ref_cfg.model.name!r}) than the policy's")
    result = {"workdir": a.workdir, "step": _checkpoint_step(a.workdir, directory), "mixture": a.mixture,
              "reference": {"checkpoint": ref_source[0], "step": ref_source[1]},
              **dpo.evaluate(policy, reference, rows, cfg)}
    out = a.out or storage.join(storage.resolve(a.workdir), "eval", f"dpo_{a.mixture}.json")
    storage.write_text(out, json.dumps(result, indent=1) + "\n")
    for key in ("pairs", "preference_accuracy", "reward_margin", "loss", "rewards_chosen", "rewards_rejected",
                "policy_accuracy"):
        print(f"{key:>20} {result[key]:.4f}")
    print(f"wrote {out}")
    return 0


def seqio_main(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    directory, cfg = _checkpoint(p, a)
    import json

    from glm_jax import config, sharding, storage, weights
    from glm_jax.data.errors import DataError
    from glm_jax.eval import seqio_eval

    mesh = sharding.make_mesh(config.MeshConfig())
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    try:
        seqio_eval.import_modules(a.module_import)
        evaluation = seqio_eval.SeqioEvaluation(a.tasks, a.split, cfg.model, rows,  # checks before weights are read
                                                num_examples=a.num_examples)
    except DataError as e:
        p.error(f"--tasks {a.tasks!r}: {e}")
    loaded = weights.load(workdir=a.workdir, step=a.step, mesh=mesh)
    metrics = evaluation.evaluate(loaded.params, loaded.cfg, loaded.run, mesh)
    by_task: dict = {}
    for key, value in metrics.items():
        _, task, name = key.split("/", 2)
        by_task.setdefault(task, {})[name] = value
    result = {"workdir": a.workdir, "step": _checkpoint_step(a.workdir, directory), "split": a.split,
              "examples": evaluation.examples, "metrics": by_task}
    out = a.out or storage.join(storage.resolve(a.workdir), "eval", "seqio.json")
    storage.write_text(out, json.dumps(result, indent=1) + "\n")
    for task, values in by_task.items():
        for name, value in values.items():
            print(f"{task:>24} {name:>16} {value:.4f}")
    print(f"wrote {out}")
    return 0


def _checkpoint_step(workdir: str, directory: str) -> int | None:
    """The training step of the checkpoint at `directory` (None for a params-only checkpoint)."""
    from glm_jax.train import checkpoint

    return None if checkpoint.is_params_checkpoint(workdir) else int(directory.rstrip("/").split("/")[-2])


def _shapes(params: dict) -> list:
    import jax  # noqa: PLC0415

    return [x.shape for x in jax.tree.leaves(params)]


if __name__ == "__main__":
    sys.exit(main())
