"""GLM-4 chat and tool-call format: a conversation -> token ids + the mask of what the assistant says.

A conversation (one JSON object; the bundled SFT set data/sft/chat_sft.jsonl has one per line):

    {"tools": [{"name": "get_weather", "description": "...", "parameters": {...}}],      # optional
     "messages": [{"role": "system", "content": "..."},                                    # optional, first
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "tool_call": {"name": "get_weather", "arguments": {...}}},
                  {"role": "observation", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

renders to ids (GLM-4's layout):

    [gMASK]<sop><|system|>\n{system}[# 可用工具 ...]<|user|>\n{content}<|assistant|>{tool name}\n{json args}
    <|observation|>\n{result}<|assistant|>\n{content}<|endoftext|>

`label_mask[i] = 1` where token i is something the assistant says: everything after each
`<|assistant|>` (the newline or tool name, content, json arguments) and the token that ends its
turn (the next role token, or `<|endoftext|>` after the last turn). The role token `<|assistant|>`
itself is the prompt, not a label. The loader turns this into the per-position `loss_mask`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from glm_jax.data.errors import DataError

ROLES = ("system", "user", "assistant", "observation")
_ROLE_TOKEN = {r: f"<|{r}|>" for r in ROLES}
TOOLS_HEADER = "# 可用工具"
TOOL_FOOTER = "在调用上述函数时，请使用 Json 格式表示调用的参数。"


def validate(conv: Any, where: str) -> None:
    """Raises DataError naming `where` (e.g. `file.jsonl:12`) and the missing/bad field."""
    if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list) or not conv["messages"]:
        raise DataError(f"{where}: expected an object with a non-empty `messages` list")
    tools = conv.get("tools", [])
    if not isinstance(tools, list) or any(not isinstance(t, dict) or "name" not in t for t in tools):
        raise DataError(f"{where}: `tools` must be a list of objects each with a `name`")
    for i, m in enumerate(conv["messages"]):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise DataError(f"{at}: `role` must be one of {ROLES}")
        if m["role"] == "system" and i != 0:
            raise DataError(f"{at}: a system message may only come first")
        if m["role"] == "assistant" and "tool_call" in m:
            call = m["tool_call"]
            if not isinstance(call, dict) or not isinstance(call.get("name"), str) or "arguments" not in call:
                raise DataError(f"{at}: `tool_call` needs `name` (string) and `arguments`")
        elif not isinstance(m.get("content"), str):
            alt = " or a `tool_call`" if m["role"] == "assistant" else ""
            raise DataError(f"{at}: needs a string `content`{alt}")
    if conv["messages"][-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (it is what training learns)")


def system_text(content: str, tools: list[dict]) -> str:
    """The system turn's text: the system message, then GLM-4's tool section for each tool."""
    parts = [content] if content else []
    if tools:
        blocks = "".join(f"\n\n## {t['name']}\n\n{json.dumps(t, ensure_ascii=False, indent=4)}\n{TOOL_FOOTER}"
                         for t in tools)
        parts.append(TOOLS_HEADER + blocks)
    return "\n\n".join(parts)


def turn_text(m: dict) -> str:
    """The text after a turn's role token (tool name + JSON arguments, or newline + content)."""
    if m["role"] == "assistant" and "tool_call" in m:
        return m["tool_call"]["name"] + "\n" + json.dumps(m["tool_call"]["arguments"], ensure_ascii=False)
    return "\n" + m["content"]


def render(conv: dict, vocab, where: str = "conversation") -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [N], label_mask uint8 [N]) for one conversation; `vocab` has `special_id` + `encode`."""
    validate(conv, where)
    ids = [vocab.special_id("[gMASK]"), vocab.special_id("<sop>")]
    mask = [0, 0]
    messages = conv["messages"]
    tools = conv.get("tools", [])
    if messages[0]["role"] == "system" or tools:
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        text = "\n" + system_text(system, tools)
        ids += [vocab.special_id("<|system|>"), *vocab.encode(text)]
        mask += [0] * (len(ids) - len(mask))
    prev_assistant = False
    for m in messages:
        if m["role"] == "system":
            continue
        says = m["role"] == "assistant"
        body = list(vocab.encode(turn_text(m)))
        ids += [vocab.special_id(_ROLE_TOKEN[m["role"]]), *body]
        # The role token that ends an assistant turn is the assistant's to produce.
        mask += [1 if prev_assistant else 0] + [int(says)] * len(body)
        prev_assistant = says
    ids.append(vocab.special_id("<|endoftext|>"))
    mask.append(1)
    return np.asarray(ids, np.int32), np.asarray(mask, np.uint8)
