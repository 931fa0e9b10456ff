"""Evaluate a training workdir (or a params-only checkpoint).

    python -m glm_jax.eval passkey --workdir=DIR --lengths=512,1024,2048,4096,8192 --depths=10 \
        [--samples=4] [--step=N] [--out=DIR/eval/passkey] [--tokenizer=FILE]

The tokenizer is the run's (`data.tokenizer`, else its mixture's); `--tokenizer` names a file
instead, for a run whose data tasks were registered by another program (e.g.
benchmarks/long_context.py: `--tokenizer=data/tokenizer/bundled.tiktoken`).

Writes OUT.json and OUT.png (accuracy heatmap, depth x length) and prints a table.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m glm_jax.eval", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
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
    a = p.parse_args(argv)
    try:
        lengths = [int(x) for x in a.lengths.split(",")]
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {a.lengths!r}")
    if a.depths < 1 or a.samples < 1:
        p.error("--depths and --samples must be >= 1")
    from glm_jax import cli

    cli.quiet_libraries(a.verbose)
    from glm_jax.config import ConfigError
    from glm_jax.data.loader import vocabulary
    from glm_jax.data.errors import DataError
    from glm_jax.data.tokenizer import load_tokenizer
    from glm_jax.eval import passkey
    from glm_jax.train.checkpoint import locate_params, restore_params

    from glm_jax import storage

    if not storage.isdir(storage.resolve(a.workdir)):
        p.error(f"--workdir {a.workdir!r} does not exist (a local path or gs:// URL)")
    _, cfg = locate_params(a.workdir, a.step)  # the run's config, before reading any weights
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


if __name__ == "__main__":
    sys.exit(main())
