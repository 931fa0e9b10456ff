"""Does raising the RoPE base help a model continue to longer contexts? A real run on the debug model.

    python -m benchmarks.long_context [--ratios=1,4,50] [--steps_2k=300] [--workdir=runs/long_context]

The debug plan of configs/long_context.py, cut to its first two stages: train at 512 tokens, then
continue at 2K tokens with each ctx2k rope_ratio of `--ratios` (the plan's 50, the length's 4, and
1 = no scaling), same steps, same data, same start (stage ctx512 runs once; every arm copies its
workdir and resumes into ctx2k, the way the trainer switches stages). The data teaches retrieval:
passkey documents (`passkey.training_texts`: English prose from the bundled corpus with a needle;
keys and haystack offsets disjoint from the eval's), 96-320 tokens in ctx512, 256-2040 in ctx2k.
Then `passkey.evaluate` scores every arm at each length and depth (log-probability of the digits
and exact greedy retrieval), and every kept ctx2k checkpoint at 2048. Prints the tables, writes
JSON and one heatmap per arm next to it, and says whether the plan's arm beats the unscaled one
at 4x the first stage's length.

Defaults fit a 2-core CPU (~35 min for ctx512, ~50 min per ctx2k arm alone): one device, and
ctx512 with batch 2 and lr 2e-3 instead of the plan's 8 and 1e-3, because the 4.9M-parameter
model only starts copying the key after ~1-2K updates (none after 400 at batch 8, lr 1e-3 or 2e-3).
`--devices=8` runs the plan's meshes (ctx2k context-parallel over 4 devices). Finished stages are
not rerun and scores are cached in each workdir's eval/, so a rerun only reports; `--train_only`
lets several processes train arms side by side first. The workdirs are ordinary training runs:
`python -m glm_jax.eval passkey --workdir=runs/long_context/rope50 \
--tokenizer=data/tokenizer/bundled.tiktoken` scores one the same way.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys

def _devices_flag() -> int:  # read before jax is imported: it fixes the number of CPU devices
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--devices"):
            return int(arg.split("=", 1)[1] if "=" in arg else sys.argv[i + 1])
    return 1


os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_devices_flag()}")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from glm_jax import config  # noqa: E402
from glm_jax.data import tasks  # noqa: E402
from glm_jax.data.loader import make_iterator  # noqa: E402
from glm_jax.data.tokenizer import bundled_tokenizer  # noqa: E402
from glm_jax.eval import passkey  # noqa: E402
from glm_jax.train import loop, metrics  # noqa: E402
from glm_jax.train.checkpoint import StageCheckpoints, locate_params, restore_params, stage_dir  # noqa: E402

BASE_LEN = 512
PLAN = os.path.join(REPO, "configs", "long_context.py:model=debug")


def register_data(workdir: str, tokenizer, docs_512: int, docs_2k: int) -> dict[str, str]:
    """Writes the passkey documents for both stages and registers one task per stage."""
    stage_tasks = {}
    for stage, (count, lo, hi, seed) in {"ctx512": (docs_512, 96, 320, 1),
                                         "ctx2k": (docs_2k, 256, 2048 - 8, 2)}.items():
        path = os.path.join(workdir, "data", f"passkey_{stage}.jsonl.gz")
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with gzip.open(path + ".tmp", "wt", encoding="utf-8") as f:
                for text in passkey.training_texts(tokenizer, count, lo, hi, seed=seed):
                    f.write(json.dumps({"text": text}) + "\n")
            os.replace(path + ".tmp", path)
        stage_tasks[stage] = tasks.register_text_task(f"passkey_{stage}", path).name
    return stage_tasks


def arm_config(rope_ratio: float, stage_tasks: dict[str, str], steps_512: int, steps_2k: int, lr_512: float,
               batch_512: int, every_2k: int, max_len: int, plan_mesh: bool):
    """configs/long_context.py:model=debug with its first two stages; ctx2k at `rope_ratio`.
    `plan_mesh`: the plan's meshes (8 devices, ctx2k context-parallel); else fsdp over all devices."""
    cd = config.load_config_dict(PLAN)
    cd.stage_order = ("ctx512", "ctx2k")
    del cd.stages["ctx8k"]
    cd.model.max_seq_len = max_len
    cd.checkpoint.every_steps = 500
    for stage, steps in (("ctx512", steps_512), ("ctx2k", steps_2k)):
        cd.stages[stage].train.steps = steps
        cd.stages[stage].train.warmup_steps = min(20, steps // 5)
        cd.stages[stage].data = {"mixture": stage_tasks[stage]}
        cd.stages[stage].eval = {"every_steps": 0}  # its passkey tasks have no held-out split; scored below
    cd.stages.ctx512.train.update(lr=lr_512, batch_size=batch_512)
    cd.stages.ctx2k.checkpoint = {"every_steps": every_2k, "keep": max(3, steps_2k // every_2k + 1)}
    cd.stages.ctx2k.model.rope_ratio = rope_ratio
    if not plan_mesh:
        for stage in cd.stage_order:
            cd.stages[stage].mesh = {"data": 1, "fsdp": -1, "sequence": 1, "tensor": 1}
            cd.stages[stage].run.remat = "none"
    return cd


def stage_seconds(workdir: str, stage: str) -> float:
    """Summed step times of `stage` from the workdir's metrics rows (whichever process ran it)."""
    return sum(r["step_time"] for r in metrics.read_rows(workdir) if r.get("stage") == stage)


def ctx2k_steps(workdir: str) -> list[int]:
    """Global steps of the ctx2k checkpoints kept in an arm's workdir."""
    ckpts = StageCheckpoints(stage_dir(workdir, "ctx2k"), read_only=True)
    try:
        return sorted(ckpts.all_steps())
    finally:
        ckpts.close()


def arm_name(ratio: float) -> str:
    return f"rope_ratio={ratio:g}"


def scores(workdir: str, step: int | None, tokenizer, lengths: list[int], depths: int, samples: int) -> dict:
    """passkey.evaluate of a checkpoint, cached in WORKDIR/eval/ (a finished arm is scored once)."""
    params_dir, _ = locate_params(workdir, step)
    step = step if step is not None else int(os.path.basename(os.path.dirname(params_dir)))
    path = os.path.join(workdir, "eval", f"passkey_step{step}_{'-'.join(map(str, lengths))}_{depths}x{samples}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    params, cfg = restore_params(workdir, step)
    res = passkey.evaluate(params, cfg.model, tokenizer, lengths, depths, samples, run=cfg.run)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f)
    return res


def by_length(res: dict, n: int, key: str) -> float:
    """Mean of `key` (accuracy or logprob) over the depths at length n."""
    vals = [r[key] for r in res["results"] if r["length"] == n]
    return sum(vals) / len(vals)


def print_row(arm: str, res: dict, lengths: list[int]) -> None:
    print(f"{arm:15} {res['rope_theta']:>10g} " + " ".join(
        f"{by_length(res, n, 'accuracy'):>6.2f} /{by_length(res, n, 'logprob'):>6.2f}" for n in lengths), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1, help="CPU devices; 8 runs the plan's meshes (ctx2k "
                    "context-parallel), fewer run fsdp over them (faster on a small CPU)")
    ap.add_argument("--steps_512", type=int, default=3000)
    ap.add_argument("--steps_2k", type=int, default=300)
    ap.add_argument("--every_2k", type=int, default=100, help="ctx2k checkpoint interval; every kept checkpoint "
                    "is scored at 4x the first stage's length (accuracy against ctx2k steps)")
    ap.add_argument("--batch_512", type=int, default=2, help="ctx512's batch (the plan's is 8; smaller batches, "
                    "more steps learn retrieval sooner per token)")
    ap.add_argument("--lr_512", type=float, default=2e-3, help="ctx512's peak lr (the plan's is 1e-3; a higher "
                    "one teaches the small model retrieval in fewer steps)")
    plan_ratio = config.load_config_dict(PLAN).stages.ctx2k.model.rope_ratio
    ap.add_argument("--ratios", default=f"1,4,{plan_ratio:g}", help="ctx2k rope_ratio of each arm; 1 (no "
                    "scaling) and the plan's are compared")
    ap.add_argument("--train_only", action="store_true", help="train the arms (after ctx512) and stop: two "
                    "processes can train arms side by side before one run without it scores and reports")
    ap.add_argument("--workdir", default=os.path.join(REPO, "runs", "long_context"))
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    ap.add_argument("--depths", type=int, default=5)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "long_context.json"))
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    target = 4 * BASE_LEN
    if target not in lengths:
        ap.error(f"--lengths must include {target} (4x the first stage's length)")
    ratios = [float(x) for x in a.ratios.split(",") if x]
    if not a.train_only and not {1.0, plan_ratio} <= set(ratios):
        ap.error(f"--ratios={a.ratios!r} must include 1 and the plan's ctx2k rope_ratio {plan_ratio:g} "
                 f"(or pass --train_only)")

    tokenizer = bundled_tokenizer()  # the debug model's (configs/debug.py's data)
    stage_tasks = register_data(a.workdir, tokenizer, docs_512=8000, docs_2k=2000)
    report = {"steps_512": a.steps_512, "steps_2k": a.steps_2k, "lr_512": a.lr_512, "batch_512": a.batch_512,
              "devices": a.devices, "plan_rope_ratio": plan_ratio, "arms": {}, "ctx2k_curve": {}}

    def make_config(rope_ratio: float):
        return arm_config(rope_ratio, stage_tasks, a.steps_512, a.steps_2k, a.lr_512, a.batch_512, a.every_2k,
                          max(lengths), a.devices == 8)

    base_dir = os.path.join(a.workdir, "ctx512")
    first = make_config(1.0)
    first.stage_order = ("ctx512",)
    del first.stages["ctx2k"]
    loop.run(first, base_dir, make_iterator)
    report["ctx512_seconds"] = stage_seconds(base_dir, "ctx512")
    if not a.train_only:
        report["arms"]["ctx512 only"] = scores(base_dir, None, tokenizer, lengths, a.depths, a.samples)
        print_row("ctx512 only", report["arms"]["ctx512 only"], lengths)

    for ratio in ratios:
        arm, arm_dir = arm_name(ratio), os.path.join(a.workdir, f"rope{ratio:g}")
        if not os.path.isdir(arm_dir):
            shutil.copytree(base_dir, arm_dir)
        loop.run(make_config(ratio), arm_dir, make_iterator)
        seconds = stage_seconds(arm_dir, "ctx2k")
        if a.train_only:
            print(f"{arm}: ctx2k trained ({seconds:.0f} s of steps)", flush=True)
            continue
        res = dict(scores(arm_dir, None, tokenizer, lengths, a.depths, a.samples))
        res["ctx2k_seconds"] = seconds
        res["rope_ratio"] = ratio
        report["arms"][arm] = res
        print_row(arm, res, lengths)
        report["ctx2k_curve"][arm] = curve = {}
        for step in ctx2k_steps(arm_dir):
            curve[step - a.steps_512] = r = scores(arm_dir, step, tokenizer, [target], a.depths, a.samples)
            print(f"{arm:15} ctx2k step {step - a.steps_512:>4}: at {target} {by_length(r, target, 'accuracy'):.2f}"
                  f" / {by_length(r, target, 'logprob'):.2f}", flush=True)
    if a.train_only:
        return

    print(f"\n{'arm':15} {'rope theta':>10} " + " ".join(f"{n:>14}" for n in lengths) + "   (accuracy / logprob)")
    for arm, res in report["arms"].items():
        print_row(arm, res, lengths)
    print(f"\nat {target}, by ctx2k steps (accuracy / logprob):")
    for arm, curve in report["ctx2k_curve"].items():
        print(f"{arm:15} " + "  ".join(f"{s}: {by_length(r, target, 'accuracy'):.2f} / "
                                       f"{by_length(r, target, 'logprob'):.2f}" for s, r in curve.items()))
    scaled, unscaled = report["arms"][arm_name(plan_ratio)], report["arms"][arm_name(1.0)]
    report["scaled_beats_unscaled_at_4x"] = {
        key: by_length(scaled, target, key) > by_length(unscaled, target, key) for key in ("accuracy", "logprob")}
    print(f"\nsteps: ctx512 {a.steps_512} ({report['ctx512_seconds']:.0f} s), ctx2k {a.steps_2k} per arm (" +
          ", ".join(f"{arm} {report['arms'][arm]['ctx2k_seconds']:.0f} s" for arm in map(arm_name, ratios)) + ")")
    print(f"plan's rope_ratio {plan_ratio:g} beats rope_ratio 1 at {target}: {report['scaled_beats_unscaled_at_4x']}")

    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2)
    stem = os.path.splitext(a.out)[0]
    for arm, res in report["arms"].items():
        tag = "ctx512" if arm == "ctx512 only" else f"rope{res['rope_ratio']:g}"
        passkey.save(res, f"{stem}_{tag}.json", f"{stem}_{tag}.png")
    print(f"wrote {a.out} and {stem}_<arm>.json/.png")


if __name__ == "__main__":
    main()
