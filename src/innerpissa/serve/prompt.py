"""A request's text as token ids: the one place the server renders chat.

A conversation of one system message (the library's default one when the request has none, the system
message `innerpissa generate`, training and evaluation use) and one user message is rendered by
`eval.generation.chat_ids`, so the server sees exactly the prompt `innerpissa generate` builds; longer
conversations go through the tokenizer's chat template the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from innerpissa.eval.generation import chat_ids
from innerpissa.eval.harness import DEFAULT_SYSTEM

ROLES = ("system", "user", "assistant")


def render_chat(tokenizer, messages: Sequence[tuple[str, str]]) -> list[int]:
    """Token ids of a chat prompt from (role, content) pairs, with the assistant turn opened. The first
    message may be the system message (else `DEFAULT_SYSTEM` is used); the rest alternate freely between
    user and assistant and the last is the user's (the caller checks this)."""
    msgs = list(messages)
    if not msgs or msgs[0][0] != "system":
        msgs.insert(0, ("system", DEFAULT_SYSTEM))
    if len(msgs) == 2:
        return chat_ids(tokenizer, msgs[1][1], msgs[0][1])
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in msgs],
                                             add_generation_prompt=True, tokenize=False)
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    turns = "\n\n".join(f"{r.capitalize()}: {c}" for r, c in msgs[1:])
    return list(tokenizer(f"{msgs[0][1]}\n\n{turns}\n\nAssistant:")["input_ids"])


def render_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a plain completion prompt (the tokenizer's special tokens added as it adds them)."""
    return list(tokenizer(prompt)["input_ids"])
