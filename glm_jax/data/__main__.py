"""Shows what a config trains on: the tasks and rates, cached sizes, and the first packed rows decoded.

    python -m glm_jax.data --config=configs/debug.py [--config.data.mixture=bundled_sft_mix] [--rows=2]

Builds the tokenized cache if it is missing (the same one training uses).
"""

from absl import app, flags
from ml_collections import config_flags

from glm_jax import config
from glm_jax.data import loader

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a configs/*.py file.", lock_config=True)
_ROWS = flags.DEFINE_integer("rows", 1, "Packed rows to decode and print.")


def main(argv):
    del argv
    cfg = config.from_config_dict(_CONFIG.value)
    streams = loader.task_streams(cfg)
    print(f"mixture {cfg.data.mixture!r}, rows of {cfg.train.seq_len} tokens, "
          f"{cfg.train.batch_size} rows per step (all hosts)")
    for st in streams:
        c = st.cached
        print(f"  {c.name:<24} rate {st.rate:<5g} {len(c.lengths):>7,} examples {int(c.lengths.sum()):>12,} tokens "
              f"{len(st.pieces):>8,} pieces  ({c.path})")
    batch = next(loader.make_iterator(cfg, process_index=0, process_count=1))
    for r in range(min(_ROWS.value, len(batch["tokens"]))):
        seg, mask = batch["segment_ids"][r], batch["loss_mask"][r]
        print(f"\nrow {r}: {int(seg.max())} documents, {int((seg > 0).sum())} tokens, "
              f"{int(mask.sum())} with loss")
        for k in range(1, int(seg.max()) + 1):
            ids = batch["tokens"][r][seg == k].tolist()
            print(f"  [{k}] {streams[0].vocab._decode(ids)[:300]!r}")


if __name__ == "__main__":
    app.run(main)
