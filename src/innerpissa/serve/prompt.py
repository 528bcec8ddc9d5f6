"""A request's text as token ids: the one place the server renders chat.

A conversation of one system message (the library's default one when the request has none, the system
message `innerpissa generate`, training and evaluation use) and one user message is rendered by
the library's one chat renderer (`data.chat`), so the server sees exactly the prompt `innerpissa generate`
builds; longer conversations go through the tokenizer's chat template the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from innerpissa.data.chat import DEFAULT_SYSTEM, conversation_ids

ROLES = ("system", "user", "assistant")


def render_chat(tokenizer, messages: Sequence[tuple[str, str]]) -> list[int]:
    """Token ids of a chat prompt from (role, content) pairs, with the assistant turn opened. The first
    message may be the system message (else `DEFAULT_SYSTEM` is used); the rest alternate freely between
    user and assistant and the last is the user's (the caller checks this)."""
    msgs = list(messages)
    if not msgs or msgs[0][0] != "system":
        msgs.insert(0, ("system", DEFAULT_SYSTEM))
    return conversation_ids(tokenizer, msgs)


def render_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a plain completion prompt (the tokenizer's special tokens added as it adds them)."""
    return list(tokenizer(prompt)["input_ids"])
