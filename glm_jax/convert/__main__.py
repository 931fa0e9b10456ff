"""Convert between our training checkpoints and PyTorch (HuggingFace / THUDM) checkpoint directories.

    python -m glm_jax.convert to-hf   --workdir=DIR [--step=N] --out=HF_DIR [--dtype=bfloat16] [--naming=hf|thudm]
                                      [--tokenizer=FILE|none]
    python -m glm_jax.convert from-hf --hf=HF_DIR --config=configs/glm4_9b.py --out=CKPT_DIR [--config.x=...]

to-hf: the latest (or --step) checkpoint of a training workdir, or a params-only checkpoint, to
sharded safetensors + config.json + generation_config.json + the weights' tokenizer (tokenizer.json
for transformers and the original file), loadable with AutoModelForCausalLM.from_pretrained. The
tokenizer is --tokenizer, else the checkpoint's own (from-hf keeps it), else the run's; its stop
and pad ids go into the configs, and one the weights' vocabulary was not made for is refused.
`--tokenizer=none` exports the weights and configs only. A checkpoint imported from a directory
without tokenizer files has no tokenizer of its own and never borrows its config's data.tokenizer:
its export needs --tokenizer=FILE or --tokenizer=none.
from-hf: released GLM-4 / GLM-4-0414 / ChatGLM3 weights (HF names or THUDM names, bf16 or fp32)
to a params-only checkpoint that `train.init_from` starts a run from, with the tokenizer files of
--hf kept in CKPT/tokenizer/ (a run from it tokenizes with them unless data.tokenizer says
otherwise). Every tensor is checked against the config first; on any error nothing is left at --out.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from glm_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "to-hf: training workdir or params-only checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "to-hf: checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output directory (must not exist or be empty).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16", "float16"], "to-hf: tensor dtype.")
_NAMING = flags.DEFINE_enum("naming", "hf", ["hf", "thudm"], "to-hf: tensor names (transformers' Glm or THUDM's).")
_SHARD_MB = flags.DEFINE_integer("max_shard_mb", 2048, "to-hf: largest safetensors shard (MiB); peak memory is "
                                 "about one shard plus one layer (or the embedding, if larger).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "to-hf: tokenizer file to ship (default: the checkpoint's own "
                                 "tokenizer/, else the run's data.tokenizer or its mixture's); `none`: weights and "
                                 "configs only.")
_HF = flags.DEFINE_string("hf", None, "from-hf: directory with safetensors (+ config.json).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "from-hf: the configs/*.py the weights belong to.",
                                          lock_config=False)

NO_TOKENIZER = "none"  # --tokenizer=none: export weights and configs only
# Written by from-hf when the source had no tokenizer file it keeps (tokenizer.model, or a
# tokenizer.json it recovers one from): to-hf then ships no tokenizer unless told which (the
# checkpoint's config.json names a data tokenizer that is not the weights').
IMPORT_RECORD = "imported_without_tokenizer.json"

USAGE = ("usage: python -m glm_jax.convert to-hf --workdir=DIR --out=HF_DIR [--step=N] [--dtype=...] [--naming=...] "
         "[--tokenizer=FILE|none]\n"
         "       python -m glm_jax.convert from-hf --hf=HF_DIR --config=configs/NAME.py --out=CKPT_DIR")


def _export_vocabulary(cfg, checkpoint_dir: str):
    """The tokenizer to-hf ships: --tokenizer, else the one the checkpoint keeps (from-hf's
    `tokenizer/`), else the run's (`data.tokenizer` or its mixture's). None for --tokenizer=none,
    and, with a note, for a run whose data isn't registered here. A checkpoint from-hf imported
    without tokenizer files raises ConversionError (its config's tokenizer is not the weights'). A
    tokenizer the weights' vocabulary was not made for raises ConfigError naming data.tokenizer.
    Both before anything is written."""
    from glm_jax import storage
    from glm_jax.config import ConfigError
    from glm_jax.convert.keymap import ConversionError
    from glm_jax.data.errors import DataError
    from glm_jax.data.loader import vocabulary
    from glm_jax.data.tokenizer import VOCAB_PADDING, checkpoint_tokenizer, fits_model, load_tokenizer

    if _TOKENIZER.value == NO_TOKENIZER:
        return None
    path = _TOKENIZER.value or checkpoint_tokenizer(checkpoint_dir)
    record = storage.join(storage.resolve(checkpoint_dir), IMPORT_RECORD)
    if not path and storage.isfile(record):
        raise ConversionError(f"{checkpoint_dir} was imported from {storage.read_json(record)['hf']}, which had no "
                              f"tokenizer files, so it has no tokenizer of its own (its config's data.tokenizer is "
                              f"not the weights'); nothing written. Pass --tokenizer=none to export the weights and "
                              f"configs only, or --tokenizer=FILE (the weights' tokenizer.model)")
    try:
        vocab = load_tokenizer(path) if path else vocabulary(cfg)
    except DataError as e:
        raise ConfigError("data.tokenizer", f"--tokenizer: {e}") from None
    except ConfigError as e:  # a run whose data isn't registered here still exports its weights
        print(f"note: no tokenizer exported ({e})", file=sys.stderr)
        return None
    V = cfg.model.vocab_size
    if not fits_model(vocab, V):
        raise ConfigError("data.tokenizer", f"the run's tokenizer {vocab!r} ({vocab.vocab_size} ids incl. specials) "
                          f"does not fit the weights' model.vocab_size={V} (a padded vocabulary is its tokenizer's "
                          f"ids plus fewer than {VOCAB_PADDING}), so it is not the tokenizer these weights were "
                          f"trained with; nothing written. Pass --tokenizer=FILE (the weights' tokenizer.model), or "
                          f"train with --config.data.tokenizer=FILE")
    return vocab


def _tokenizer_files(vocab, tmp: str, naming: str) -> tuple[dict[str, str], list[int], int | None, str]:
    """(files to ship with the export, eos ids, pad id, THUDM remote-code family) for `vocab`."""
    from glm_jax.data.tokenizer import END_TOKENS, GLMTokenizer

    if vocab is None:
        return {}, [], None, "glm4"
    ids = {name: vocab.special_id(name) for name in END_TOKENS}
    eos, pad = list(ids.values()), ids["<|endoftext|>"]
    if not isinstance(vocab, GLMTokenizer):
        return {"tokenizer.model": vocab.sentencepiece_model_file}, eos, pad, "chatglm3"
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from glm_jax.data.tokenizer import SPLIT_PATTERN

    fast = TikTokenConverter(vocab_file=vocab.path, pattern=SPLIT_PATTERN,
                             extra_special_tokens=list(vocab.specials)).converted()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=fast, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                     additional_special_tokens=[s for s in vocab.specials if s != "<|endoftext|>"])
    hf_tok.save_pretrained(tmp)
    files = {name: os.path.join(tmp, name) for name in os.listdir(tmp)}
    files["tokenizer.tiktoken"] = vocab.path
    if naming == "thudm":  # THUDM's ChatGLM4Tokenizer reads the tiktoken-format file as tokenizer.model
        files["tokenizer.model"] = vocab.path
    return files, eos, pad, "glm4"


def to_hf() -> None:
    from glm_jax.convert import hf
    from glm_jax.train.checkpoint import locate_params, param_reader

    if not _WORKDIR.value or not _OUT.value:
        raise app.UsageError("to-hf needs --workdir and --out\n" + USAGE)
    from glm_jax import storage

    if not storage.isdir(storage.resolve(_WORKDIR.value)):
        raise app.UsageError(f"--workdir {_WORKDIR.value!r} does not exist (a local path or gs:// URL)")
    directory, cfg = locate_params(_WORKDIR.value, _STEP.value)
    vocab = _export_vocabulary(cfg, _WORKDIR.value)
    with tempfile.TemporaryDirectory() as tmp:
        files, eos, pad, code = _tokenizer_files(vocab, tmp, _NAMING.value)
        hf.export(param_reader(directory), cfg.model, _OUT.value, naming=_NAMING.value, dtype=_DTYPE.value,
                  eos_token_ids=eos, pad_token_id=pad, extra_files=files, max_shard_bytes=_SHARD_MB.value << 20,
                  thudm_code=code)
    print(f"wrote {_OUT.value} ({_NAMING.value} names, {_DTYPE.value}) from {_WORKDIR.value}, "
          + (f"tokenizer {vocab.path}" if vocab is not None else "weights and configs only (no tokenizer)"))


def from_hf() -> None:
    from glm_jax import config
    from glm_jax.convert import hf
    from glm_jax.data.errors import DataError
    from glm_jax.data.tokenizer import (CHECKPOINT_TOKENIZER_DIR, TOKENIZER_FILES, checkpoint_tokenizer,
                                        tiktoken_from_tokenizer_json)
    from glm_jax.train.checkpoint import save_params

    if not _HF.value or not _OUT.value or _CONFIG.value is None:
        raise app.UsageError("from-hf needs --hf, --config and --out\n" + USAGE)
    out = os.path.abspath(_OUT.value)
    if os.path.exists(out) and os.listdir(out):
        raise app.UsageError(f"--out {out!r} exists and is not empty; choose a new directory")
    cfg = config.from_config_dict(_CONFIG.value)
    read = hf.dir_reader(_HF.value, cfg.model)  # validates everything before anything is written
    kept = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(_HF.value, n))]
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(out))
    try:
        save_params(tmp, read, cfg)  # one layer at a time
        if kept:  # the weights' tokenizer travels with them (train.init_from and to-hf use it)
            os.makedirs(os.path.join(tmp, CHECKPOINT_TOKENIZER_DIR))
            for name in kept:
                shutil.copyfile(os.path.join(_HF.value, name), os.path.join(tmp, CHECKPOINT_TOKENIZER_DIR, name))
            if "tokenizer.json" in kept and not set(kept) & set(TOKENIZER_FILES[:2]):
                try:  # transformers-only tokenizer (GLM-4-0414, *-hf): recover the tiktoken file it came from
                    tiktoken_from_tokenizer_json(os.path.join(_HF.value, "tokenizer.json"),
                                                 os.path.join(tmp, CHECKPOINT_TOKENIZER_DIR, "tokenizer.tiktoken"))
                    kept.append("tokenizer.tiktoken (from tokenizer.json)")
                except DataError as e:
                    print(f"note: {e}; a run from this checkpoint needs --config.data.tokenizer", file=sys.stderr)
        own = checkpoint_tokenizer(tmp)
        if own is None:
            with open(os.path.join(tmp, IMPORT_RECORD), "w") as f:
                json.dump({"hf": os.path.abspath(_HF.value)}, f)
        if os.path.isdir(out):
            os.rmdir(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out} (tokenizer files kept: {', '.join(kept) or 'none'}): start a run from it with "
          f"--config.train.init_from={out}" + ("" if own else f"; to-hf of it needs --tokenizer=FILE or "
                                                               f"--tokenizer={NO_TOKENIZER}"))


def main(argv):
    if len(argv) != 2 or argv[1] not in ("to-hf", "from-hf"):
        raise app.UsageError(USAGE)
    from glm_jax.config import ConfigError
    from glm_jax.convert.keymap import ConversionError

    try:
        (to_hf if argv[1] == "to-hf" else from_hf)()
    except (ConversionError, ConfigError, FileNotFoundError) as e:
        print(f"glm_jax.convert {argv[1]}: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli.run(main)
