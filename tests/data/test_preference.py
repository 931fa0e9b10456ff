"""Preference pairs: rendering (shared prompt, loss only on each response), pairs kept together
through packing and resume, and bad input named by file:line (must-show 6)."""

import json
import os

import numpy as np
import pytest

from glm_jax.config import ConfigError
from glm_jax.data import loader, preference, tasks
from glm_jax.data.errors import DataError
from glm_jax.data.tokenizer import bundled_tokenizer
from tests.conftest import REPO

PAIR = {"messages": [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "2+2=?"},
                     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
        "chosen": {"role": "assistant", "content": "6"},
        "rejected": {"role": "assistant", "content": "I don't know."}}
DPO = ("train.objective='dpo'", "data.mixture='bundled_prefs'", "train.seq_len=512", "train.batch_size=4")


def _lines(name):
    with open(os.path.join(REPO, "data", "preference", f"{name}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_pair_shares_the_prompt_and_masks_only_each_final_response():
    v = bundled_tokenizer()
    ids, mask, part = preference.render_pair(PAIR, v)
    nc = int(np.sum(part == 0))
    chosen, rejected = ids[:nc], ids[nc:]
    prompt = len(chosen) - len(v.encode("\n6")) - 1
    assert chosen[:prompt].tolist() == rejected[:prompt].tolist()  # one prompt, token for token
    assert v.decode(chosen[mask[:nc] == 1].tolist()) == "\n6<|endoftext|>"
    assert v.decode(rejected[mask[nc:] == 1].tolist()) == "\nI don't know.<|endoftext|>"
    assert mask[:prompt].sum() == 0  # the earlier assistant turn "4" is prompt here, not a label


def test_bundled_set_is_zh_and_en_with_tool_calls_and_every_pair_renders():
    v = bundled_tokenizer()
    rows = _lines("train") + _lines("heldout")
    assert len(_lines("train")) >= 30 and len(_lines("heldout")) >= 10
    text = json.dumps(rows, ensure_ascii=False)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text) and "the" in text
    assert any("tool_call" in r["chosen"] for r in rows) and any(r.get("tools") for r in rows)
    train_prompts = {json.dumps(r["messages"], ensure_ascii=False) for r in _lines("train")}
    assert not any(json.dumps(r["messages"], ensure_ascii=False) in train_prompts for r in _lines("heldout"))
    for i, row in enumerate(rows):
        ids, mask, part = preference.render_pair(row, v, f"row {i}")
        assert mask[part == 0].sum() > 0 and mask[part == 1].sum() > 0


def _pairs_of(batch):
    """[(chosen tokens, rejected tokens, chosen mask, rejected mask)] of every row, checking the layout."""
    out = []
    for b in range(len(batch["tokens"])):
        seg, pos = batch["segment_ids"][b], batch["positions"][b]
        ids = [s for s in np.unique(seg) if s > 0]
        assert ids == list(range(1, len(ids) + 1)) and len(ids) % 2 == 0, ids  # pairs: (1, 2), (3, 4), ...
        for k in range(1, len(ids) // 2 + 1):
            c, r = seg == 2 * k - 1, seg == 2 * k
            assert pos[c].tolist() == list(range(c.sum())) and pos[r].tolist() == list(range(r.sum()))
            assert np.flatnonzero(c)[-1] + 1 == np.flatnonzero(r)[0]  # rejected right after its chosen
            out.append((batch["tokens"][b][c], batch["tokens"][b][r], batch["loss_mask"][b][c],
                        batch["loss_mask"][b][r]))
    return out


def test_packing_keeps_each_pair_together_and_every_pair_appears_once_per_epoch(data_cfg):
    cfg = data_cfg(*DPO)
    v = bundled_tokenizer()
    want = sorted(tuple(preference.render_pair(r, v)[0].tolist()) for r in _lines("train"))
    packed = _pairs_of(loader.epoch_rows(cfg))
    assert sorted(tuple(np.concatenate([c, r]).tolist()) for c, r, _, _ in packed) == want
    for c, r, mc, mr in packed:
        p = int(np.argmax(mc))  # the first counted target: the last prompt token (<|assistant|>)
        assert c[:p + 1].tolist() == r[:p + 1].tolist() and c[p] == v.special_id("<|assistant|>")
        assert mc[-1] == 0 and mr[-1] == 0  # the last token of each sequence predicts nothing
    rows = _pairs_of(next(loader.make_iterator(cfg, rows=[0, 1, 2, 3])))
    assert len(rows) >= 4  # several pairs per 512-token row


def test_resume_continues_with_the_same_pairs(data_cfg):
    cfg = data_cfg(*DPO)
    it = loader.make_iterator(cfg, rows=[1, 3])
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    again = loader.make_iterator(cfg, rows=[1, 3])
    again.set_state(json.loads(json.dumps(state)))
    for w in want:
        got = next(again)
        assert all(np.array_equal(got[k], w[k]) for k in loader.FEATURES)


def _task(tmp_path, name, rows):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    tasks.register_preference_task(name, str(path))
    return path


def test_bad_pairs_are_clear_errors_naming_the_row(data_cfg, tmp_path):
    good = PAIR
    no_chosen = {k: v for k, v in PAIR.items() if k != "chosen"}
    _task(tmp_path, "test_prefs_no_chosen", [good, good, no_chosen])
    with pytest.raises(DataError, match=r"test_prefs_no_chosen.jsonl:3: the pair has no `chosen` response"):
        loader.make_iterator(data_cfg(*DPO, "data.mixture='test_prefs_no_chosen'"), rows=[0])
    same = {**PAIR, "rejected": dict(PAIR["chosen"])}
    _task(tmp_path, "test_prefs_same", [good, same])
    with pytest.raises(DataError, match=r"test_prefs_same.jsonl:2: `rejected` is identical to `chosen`"):
        loader.make_iterator(data_cfg(*DPO, "data.mixture='test_prefs_same'"), rows=[0])
    ends_with_assistant = {**PAIR, "messages": PAIR["messages"][:3]}
    _task(tmp_path, "test_prefs_prompt", [ends_with_assistant])
    with pytest.raises(DataError, match=r"test_prefs_prompt.jsonl:1: the prompt .* must end with a user or observation"):
        loader.make_iterator(data_cfg(*DPO, "data.mixture='test_prefs_prompt'"), rows=[0])
    long = {**PAIR, "chosen": {"role": "assistant", "content": "很长的回答。" * 80}}
    _task(tmp_path, "test_prefs_long", [good, good, long, good])
    with pytest.raises(ConfigError, match=r"train.seq_len.*512 is shorter than pair .* 1 too long at "
                                          r".*test_prefs_long.jsonl:3 \(\d+ tokens\).*raise train.seq_len"):
        loader.make_iterator(data_cfg(*DPO, "data.mixture='test_prefs_long'"), rows=[0])


def test_objective_and_data_must_agree(data_cfg):
    with pytest.raises(ConfigError, match=r"data.mixture.*train.objective=dpo needs preference pairs.*bundled_chat_sft"):
        loader.make_iterator(data_cfg("train.objective='dpo'", "data.mixture='bundled_chat_sft'"), rows=[0])
    with pytest.raises(ConfigError, match=r"train.objective.*holds preference pairs.*set train.objective=dpo"):
        loader.make_iterator(data_cfg("data.mixture='bundled_prefs'", "train.seq_len=512"), rows=[0])
