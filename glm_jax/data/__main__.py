"""The data CLI: build the tokenized caches of a config, or show what it trains on.

    python -m glm_jax.data build --config=configs/debug.py [--config.data.cache_dir=gs://BUCKET/cache]
    python -m glm_jax.data [show] --config=configs/debug.py [--config.data.mixture=bundled_sft_mix] [--rows=2]

`build` tokenizes every task of `data.mixture` whose cache is missing from `data.cache_dir` (once
per task and tokenizer; run it before a multi-host job, or let process 0 do it). `show` prints the
tasks and rates, cached sizes, and the first packed rows decoded (building missing caches first).
"""

from absl import app, flags
from ml_collections import config_flags

from glm_jax import cli, config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file.", lock_config=True)
_ROWS = flags.DEFINE_integer("rows", 1, "show: packed rows (global rows 0, 1, ...) to decode and print.")
COMMANDS = ("show", "build")


def build(cfg) -> None:
    from glm_jax.data import cache, loader  # after cli.run quiets TensorFlow, which they import

    built = loader.build_caches(cfg)
    where = cache.cache_dir_for(cfg.data.cache_dir)
    print(f"tokenized {len(built)} task(s) into {where}: {', '.join(built)}" if built
          else f"every task of {cfg.data.mixture!r} is already cached in {where}")


def show(cfg) -> None:
    from glm_jax.data import loader

    streams = loader.task_streams(cfg)
    print(f"mixture {cfg.data.mixture!r}, rows of {cfg.train.seq_len} tokens, "
          f"{cfg.train.batch_size} rows per step (all hosts)")
    for st in streams:
        c = st.cached
        print(f"  {c.name:<24} rate {st.rate:<5g} {len(c.lengths):>7,} examples {int(c.lengths.sum()):>12,} tokens "
              f"{len(st.pieces):>8,} pieces  ({c.path})")
    rows = list(range(min(_ROWS.value, cfg.train.batch_size)))
    batch = next(loader.make_iterator(cfg, rows=rows))
    for r in rows:
        seg, mask = batch["segment_ids"][r], batch["loss_mask"][r]
        print(f"\nrow {r}: {int(seg.max())} documents, {int((seg > 0).sum())} tokens, "
              f"{int(mask.sum())} with loss")
        for k in range(1, int(seg.max()) + 1):
            ids = batch["tokens"][r][seg == k].tolist()
            print(f"  [{k}] {streams[0].vocab._decode(ids)[:300]!r}")


def main(argv):
    command = argv[1] if len(argv) > 1 else "show"
    if command not in COMMANDS or len(argv) > 2:
        raise app.UsageError(f"usage: python -m glm_jax.data [{'|'.join(COMMANDS)}] --config=FILE; got {argv[1:]}")
    cfg = config.from_config_dict(_CONFIG.value)
    build(cfg) if command == "build" else show(cfg)


if __name__ == "__main__":
    cli.run(main)
