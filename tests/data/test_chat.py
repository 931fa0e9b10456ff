"""Chat/tool rendering: exact GLM-4 layout (golden ids) and a loss mask over exactly the assistant spans."""

import json
import os

import numpy as np
import pytest

from glm_jax.data import chat
from glm_jax.data.errors import DataError
from glm_jax.data.tokenizer import bundled_tokenizer
from tests.conftest import REPO

CONV = {"tools": [{"name": "get_weather", "parameters": {"city": "string"}}],
        "messages": [{"role": "user", "content": "北京天气?"},
                     {"role": "assistant", "tool_call": {"name": "get_weather", "arguments": {"city": "北京"}}},
                     {"role": "observation", "content": "晴 3°C"},
                     {"role": "assistant", "content": "北京晴，3°C。"}]}
# [gMASK]<sop><|system|>\n# 可用工具 ... <|user|>\n北京天气?<|assistant|>get_weather\n{"city": "北京"}
# <|observation|>\n晴 3°C<|assistant|>\n北京晴，3°C。<|endoftext|>   (bundled tokenizer)
GOLDEN_IDS = [
    4088, 4090, 4092, 198, 2, 220, 3457, 1399, 271, 2021, 1359, 62, 2028, 3988, 271, 90, 198, 264, 380, 478, 2136,
    380, 582, 62, 2028, 3988, 2693, 264, 380, 3383, 1349, 2136, 1777, 336, 380, 66, 940, 2136, 380, 1674, 1238, 264,
    3156, 2998, 428, 2211, 342, 644, 1264, 3198, 577, 3896, 479, 2231, 3428, 4037, 597, 3071, 2211, 2338, 1012, 290,
    4093, 198, 385, 245, 337, 105, 1956, 1864, 242, 30,
    4094, 582, 62, 2028, 3988, 198, 90, 1, 66, 940, 2136, 380, 385, 245, 337, 105, 1, 92,
    4095, 198, 1700, 112, 220, 18, 126, 108, 34,
    4094, 198, 385, 245, 337, 105, 1700, 112, 294, 18, 126, 108, 34, 290, 4086]


def _runs(mask):
    """[(start, end)] of the maximal runs of 1s."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_tool_call_conversation_golden_ids():
    ids, mask = chat.render(CONV, bundled_tokenizer())
    assert ids.dtype == np.int32 and mask.dtype == np.uint8
    assert ids.tolist() == GOLDEN_IDS
    v = bundled_tokenizer()
    assert ids[:2].tolist() == [v.special_id("[gMASK]"), v.special_id("<sop>")]


def test_loss_mask_covers_exactly_the_assistant_spans():
    v = bundled_tokenizer()
    ids, mask = chat.render(CONV, v)
    spans = [v.decode(ids[s:e].tolist()) for s, e in _runs(mask)]
    # What the assistant produces after each <|assistant|>, including the token that ends its turn.
    assert spans == ['get_weather\n{"city": "北京"}<|observation|>', "\n北京晴，3°C。<|endoftext|>"]
    assert mask[ids == v.special_id("<|assistant|>")].sum() == 0  # the role token is the prompt


@pytest.mark.parametrize("line", range(36))
def test_bundled_sft_set_masks_match_assistant_turns(line):
    """Every bundled conversation: the masked text is exactly the assistant turns + their end tokens."""
    v = bundled_tokenizer()
    with open(os.path.join(REPO, "data", "sft", "chat_sft.jsonl"), encoding="utf-8") as f:
        conv = json.loads(f.readlines()[line])
    ids, mask = chat.render(conv, v)
    msgs = [m for m in conv["messages"] if m["role"] != "system"]
    expected = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        body = (m["tool_call"]["name"] + "\n" + json.dumps(m["tool_call"]["arguments"], ensure_ascii=False)
                if "tool_call" in m else "\n" + m["content"])
        end = f"<|{msgs[i + 1]['role']}|>" if i + 1 < len(msgs) else "<|endoftext|>"
        if expected and expected[-1].endswith("<|assistant|>"):  # consecutive assistant turns form one run
            expected[-1] += body + end
        else:
            expected.append(body + end)
    assert [v.decode(ids[s:e].tolist()) for s, e in _runs(mask)] == expected


def test_bundled_sft_set_is_dozens_of_zh_and_en_conversations_with_tool_calls():
    with open(os.path.join(REPO, "data", "sft", "chat_sft.jsonl"), encoding="utf-8") as f:
        convs = [json.loads(line) for line in f]
    assert len(convs) == 36
    with_tools = [c for c in convs if any("tool_call" in m for m in c["messages"])]
    assert len(with_tools) >= 12
    text = json.dumps(convs, ensure_ascii=False)
    assert "天气" in text and "weather" in text


@pytest.mark.parametrize("conv, match", [
    ({"message": []}, "non-empty `messages`"),
    ({"messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\]: `role` must be one of"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},
     r"messages\[1\]: needs a string `content`"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_call": {"name": "f"}}]},
     "`tool_call` needs `name`"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "last message must be the assistant's"),
])
def test_bad_conversations_name_the_problem(conv, match):
    with pytest.raises(DataError, match="rows.jsonl:7: .*" + match):
        chat.render(conv, bundled_tokenizer(), where="rows.jsonl:7")
