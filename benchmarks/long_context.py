"""Does raising the RoPE base help a model continue to longer contexts? A real run on the debug model.

    python -m benchmarks.long_context [--steps_512=3000] [--steps_2k=50] [--workdir=runs/long_context]

The debug plan of configs/long_context.py, cut to its first two stages: train at 512 tokens, then
continue at 2K tokens (a) with rope_ratio 4 (the plan) and (b) with rope_ratio 1, same steps, same
data, same start (stage ctx512 runs once; both arms copy its workdir and resume into ctx2k, the
way the trainer switches stages). The data teaches retrieval: passkey documents
(`passkey.training_texts`: English prose from the bundled corpus with a needle; keys and
haystack offsets disjoint from the eval's), 96-320 tokens in ctx512 and 256-2040 in ctx2k.
Then `passkey.evaluate` scores every arm at each length and depth (log-probability of the digits
and exact greedy retrieval). Prints the tables, writes JSON and one heatmap per arm next to it,
and says whether the scaled arm beats the unscaled one at 4x the first stage's length.

Defaults fit a 2-core CPU (~35 min for ctx512, ~10 min per ctx2k arm): one device, and ctx512
with batch 2 and lr 2e-3 instead of the plan's 8 and 1e-3, because the 4.9M-parameter model only
starts copying the key after ~1-2K updates (none after 400 at batch 8, lr 1e-3 or 2e-3). `--devices=8` runs the
plan's meshes (ctx2k context-parallel over 4 devices); a finished workdir is only re-evaluated.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time

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
from glm_jax.data.loader import make_iterator, vocabulary  # noqa: E402
from glm_jax.eval import passkey  # noqa: E402
from glm_jax.train import loop  # noqa: E402
from glm_jax.train.checkpoint import StageCheckpoints, restore_params, stage_dir  # noqa: E402

BASE_LEN = 512
ARMS = {"scaled": 4.0, "unscaled": 1.0}  # ctx2k rope_ratio of each arm


def register_data(workdir: str, tokenizer, docs_512: int, docs_2k: int) -> dict[str, str]:
    """Writes the passkey documents for both stages and registers one task per stage."""
    mixtures = {}
    for stage, (count, lo, hi, seed) in {"ctx512": (docs_512, 96, 320, 1),
                                         "ctx2k": (docs_2k, 256, 2048 - 8, 2)}.items():
        path = os.path.join(workdir, "data", f"passkey_{stage}.jsonl.gz")
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with gzip.open(path + ".tmp", "wt", encoding="utf-8") as f:
                for text in passkey.training_texts(tokenizer, count, lo, hi, seed=seed):
                    f.write(json.dumps({"text": text}) + "\n")
            os.replace(path + ".tmp", path)
        mixtures[stage] = tasks.register_text_task(f"passkey_{stage}", path).name
    return mixtures


def arm_config(rope_ratio: float, mixtures: dict[str, str], steps_512: int, steps_2k: int, lr_512: float,
               batch_512: int, every_2k: int, max_len: int, plan_mesh: bool):
    """configs/long_context.py:model=debug with its first two stages; ctx2k at `rope_ratio`.
    `plan_mesh`: the plan's meshes (8 devices, ctx2k context-parallel); else fsdp over all devices."""
    cd = config.load_config_dict(os.path.join(REPO, "configs", "long_context.py:model=debug"))
    cd.stage_order = ("ctx512", "ctx2k")
    del cd.stages["ctx8k"]
    cd.model.max_seq_len = max_len
    cd.checkpoint.every_steps = 500
    for stage, steps in (("ctx512", steps_512), ("ctx2k", steps_2k)):
        cd.stages[stage].train.steps = steps
        cd.stages[stage].train.warmup_steps = min(20, steps // 5)
        cd.stages[stage].data = {"mixture": mixtures[stage]}
    cd.stages.ctx512.train.update(lr=lr_512, batch_size=batch_512)
    cd.stages.ctx2k.checkpoint = {"every_steps": every_2k, "keep": max(3, steps_2k // every_2k + 1)}
    cd.stages.ctx2k.model.rope_ratio = rope_ratio
    if not plan_mesh:
        for stage in cd.stage_order:
            cd.stages[stage].mesh = {"data": 1, "fsdp": -1, "sequence": 1, "tensor": 1}
            cd.stages[stage].model.remat = "none"
    return cd


def stage_seconds(workdir: str, stage: str) -> float:
    """Summed step times of `stage` from the workdir's metrics.jsonl (for a stage finished earlier)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return sum(r["step_time"] for r in rows if r.get("stage") == stage)


def ctx2k_steps(workdir: str) -> list[int]:
    """Global steps of the ctx2k checkpoints kept in an arm's workdir."""
    ckpts = StageCheckpoints(stage_dir(workdir, "ctx2k"), read_only=True)
    try:
        return sorted(ckpts.all_steps())
    finally:
        ckpts.close()


def by_length(res: dict, n: int, key: str) -> float:
    """Mean of `key` (accuracy or logprob) over the depths at length n."""
    vals = [r[key] for r in res["results"] if r["length"] == n]
    return sum(vals) / len(vals)


def print_row(arm: str, res: dict, lengths: list[int]) -> None:
    print(f"{arm:12} {res['rope_theta']:>10g} " + " ".join(
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
    ap.add_argument("--arms", default=",".join(ARMS), help="arms to run; naming one only trains it (after "
                    "ctx512), so two processes can train the arms side by side before a run without --arms "
                    "evaluates and reports")
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
    arms = [x for x in a.arms.split(",") if x]
    if not arms or set(arms) - set(ARMS):
        ap.error(f"--arms={a.arms!r}: choose from {','.join(ARMS)}")
    report_all = set(arms) == set(ARMS)

    base_cfg = config.from_config_dict(config.load_config_dict(os.path.join(REPO, "configs", "debug.py")))
    tokenizer = vocabulary(base_cfg)
    stage_tasks = register_data(a.workdir, tokenizer, docs_512=8000, docs_2k=2000)
    report = {"steps_512": a.steps_512, "steps_2k": a.steps_2k, "lr_512": a.lr_512, "batch_512": a.batch_512,
              "devices": a.devices, "arms": {}, "ctx2k_curve": {}}

    def make_config(rope_ratio: float):
        return arm_config(rope_ratio, stage_tasks, a.steps_512, a.steps_2k, a.lr_512, a.batch_512, a.every_2k,
                          max(lengths), a.devices == 8)

    base_dir = os.path.join(a.workdir, "ctx512")
    first = make_config(1.0)
    first.stage_order = ("ctx512",)
    del first.stages["ctx2k"]
    t0 = time.perf_counter()
    loop.run(first, base_dir, make_iterator)
    report["ctx512_seconds"] = time.perf_counter() - t0
    if report["ctx512_seconds"] < 60:  # finished earlier: only resumed
        report["ctx512_seconds"] = stage_seconds(base_dir, "ctx512")
    if report_all:
        params, cfg = restore_params(base_dir)
        report["arms"]["ctx512 only"] = passkey.evaluate(params, cfg.model, tokenizer, lengths, a.depths, a.samples)
        print_row("ctx512 only", report["arms"]["ctx512 only"], lengths)

    for arm in arms:
        arm_dir = os.path.join(a.workdir, arm)
        if not os.path.isdir(arm_dir):
            shutil.copytree(base_dir, arm_dir)
        t0 = time.perf_counter()
        loop.run(make_config(ARMS[arm]), arm_dir, make_iterator)
        seconds = time.perf_counter() - t0
        if not report_all:
            print(f"{arm}: ctx2k trained ({seconds:.0f} s this run); run without --arms to evaluate", flush=True)
            continue
        params, cfg = restore_params(arm_dir)
        res = passkey.evaluate(params, cfg.model, tokenizer, lengths, a.depths, a.samples)
        res["ctx2k_seconds"] = seconds if seconds > 60 else stage_seconds(arm_dir, "ctx2k")
        res["rope_ratio"] = ARMS[arm]
        report["arms"][arm] = res
        print_row(arm, res, lengths)
        report["ctx2k_curve"][arm] = curve = {}
        for step in ctx2k_steps(arm_dir):
            params, cfg = restore_params(arm_dir, step)
            curve[step - a.steps_512] = passkey.evaluate(params, cfg.model, tokenizer, [target], a.depths, a.samples)
            print(f"{arm:12} ctx2k step {step - a.steps_512:>5}: at {target} "
                  f"{by_length(curve[step - a.steps_512], target, 'accuracy'):.2f} / "
                  f"{by_length(curve[step - a.steps_512], target, 'logprob'):.2f}", flush=True)
    if not report_all:
        return

    print(f"\n{'arm':12} {'rope theta':>10} " + " ".join(f"{n:>14}" for n in lengths) + "   (accuracy / logprob)")
    for arm, res in report["arms"].items():
        print_row(arm, res, lengths)
    print(f"\nat {target}, by ctx2k steps (accuracy / logprob):")
    for arm, curve in report["ctx2k_curve"].items():
        print(f"{arm:12} " + "  ".join(f"{s}: {by_length(r, target, 'accuracy'):.2f} / "
                                       f"{by_length(r, target, 'logprob'):.2f}" for s, r in curve.items()))
    scaled, unscaled = report["arms"]["scaled"], report["arms"]["unscaled"]
    report["scaled_beats_unscaled_at_4x"] = {
        key: by_length(scaled, target, key) > by_length(unscaled, target, key) for key in ("accuracy", "logprob")}
    print(f"\nsteps: ctx512 {a.steps_512} ({report['ctx512_seconds']:.0f} s), ctx2k {a.steps_2k} per arm "
          f"(scaled {scaled['ctx2k_seconds']:.0f} s, unscaled {unscaled['ctx2k_seconds']:.0f} s)")
    print(f"scaled beats unscaled at {target}: {report['scaled_beats_unscaled_at_4x']}")

    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2)
    stem = os.path.splitext(a.out)[0]
    for arm, res in report["arms"].items():
        passkey.save(res, f"{stem}_{arm.split()[0]}.json", f"{stem}_{arm.split()[0]}.png")
    print(f"wrote {a.out} and {stem}_<arm>.json/.png")


if __name__ == "__main__":
    main()
