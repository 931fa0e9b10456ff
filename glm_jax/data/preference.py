"""Preference pairs for DPO: a shared prompt, a chosen and a rejected assistant response.

One pair (one JSON object per jsonl line; the bundled set is data/preference/*.jsonl):

    {"tools": [...],                                             # optional, as in chat.py
     "messages": [{"role": "system", "content": "..."},          # the prompt: chat.py turns that
                  {"role": "user", "content": "..."}],           # end with a user or observation turn
     "chosen":   {"role": "assistant", "content": "..."},        # or {"role": "assistant", "tool_call": {...}}
     "rejected": {"role": "assistant", "content": "..."}}

`render_pair` renders prompt + chosen and prompt + rejected with `chat.render` (so both sequences
start with the same prompt ids) and returns them as ONE example, chosen first:

    ids        [Nc + Nr]   int32  chosen sequence, then rejected sequence
    label_mask [Nc + Nr]   uint8  1 only on each final response (its tokens and the closing
                                  <|endoftext|>); the prompt, earlier assistant turns included, is 0
    pair_part  [Nc + Nr]   uint8  0 on the chosen sequence, 1 on the rejected one

A pair is one example all the way through caching, shuffling, packing and the iterator state, so
its two sequences always land in the same row (the loader gives them consecutive segment ids,
chosen 2k-1 and rejected 2k, positions restarting at 0 for each; see loader.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from glm_jax.data import chat
from glm_jax.data.errors import DataError

RESPONSES = ("chosen", "rejected")


def _response(row: dict, key: str, where: str) -> dict:
    m = row.get(key)
    if m is None:
        raise DataError(f"{where}: the pair has no `{key}` response; every pair needs `chosen` and `rejected` "
                        f"assistant messages")
    if not isinstance(m, dict) or m.get("role", "assistant") != "assistant":
        raise DataError(f"{where}: `{key}` must be an assistant message object ({{\"role\": \"assistant\", "
                        f"\"content\": ...}} or with a `tool_call`)")
    return {**m, "role": "assistant"}


def conversations(row: Any, where: str) -> tuple[dict, dict]:
    """(prompt + chosen, prompt + rejected) as chat.py conversations, validated; errors name `where`."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise DataError(f"{where}: expected an object with a non-empty `messages` list (the prompt turns)")
    unknown = sorted(set(row) - {"messages", "tools", "chosen", "rejected"})
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; a pair has `messages`, `chosen`, `rejected` and "
                        f"optionally `tools`")
    last = row["messages"][-1]
    if not isinstance(last, dict) or last.get("role") not in ("user", "observation"):
        raise DataError(f"{where}: the prompt (`messages`) must end with a user or observation turn, the one both "
                        f"responses answer")
    chosen, rejected = (_response(row, k, where) for k in RESPONSES)
    if chosen == rejected:
        raise DataError(f"{where}: `rejected` is identical to `chosen`; a preference pair needs two different "
                        f"responses (drop the row or fix one of them)")
    convs = []
    for key, response in zip(RESPONSES, (chosen, rejected)):
        conv = {"messages": [*row["messages"], response]}
        if "tools" in row:
            conv["tools"] = row["tools"]
        chat.validate(conv, f"{where} (prompt + {key})")
        convs.append(conv)
    return convs[0], convs[1]


def validate(row: Any, where: str) -> None:
    """Raises DataError naming `where` (e.g. `prefs.jsonl:12`) and what is wrong with the pair."""
    conversations(row, where)


def _render_one(conv: dict, vocab, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    ids, label = chat.render(conv, vocab, where)
    # The final response is its turn text and the closing <|endoftext|>; everything before is prompt.
    response = len(vocab.encode(chat.turn_text(conv["messages"][-1]))) + 1
    prompt = len(ids) - response
    mask = label.copy()
    mask[:prompt] = 0
    return ids, mask, prompt


def render_pair(row: dict, vocab, where: str = "pair") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int32, label_mask uint8, pair_part uint8), each [Nc + Nr]: chosen then rejected (module docstring)."""
    conv_c, conv_r = conversations(row, where)
    ids_c, mask_c, prompt_c = _render_one(conv_c, vocab, where)
    ids_r, mask_r, prompt_r = _render_one(conv_r, vocab, where)
    if prompt_c != prompt_r or not np.array_equal(ids_c[:prompt_c], ids_r[:prompt_r]):
        raise DataError(f"{where}: the chosen and rejected sequences do not share the prompt's tokens")
    if np.array_equal(ids_c, ids_r):
        raise DataError(f"{where}: `rejected` tokenizes exactly like `chosen`; a preference pair needs two "
                        f"different responses")
    part = np.concatenate([np.zeros(len(ids_c), np.uint8), np.ones(len(ids_r), np.uint8)])
    return np.concatenate([ids_c, ids_r]), np.concatenate([mask_c, mask_r]), part
