"""The one chat renderer: a system message, a user turn and an open assistant turn, as the model's chat
template writes them (the training pairs, the DailyDilemmas prompts, generation prompts and the probes all
go through it).

The system message is explicit (some templates, SmolLM2's, inject their own default otherwise). With a
`prefill` the assistant turn is continued from that text (`continue_final_message`); without one the
template's generation prompt opens it. Tokenizers without a chat template get a plain
`System / User: / Assistant:` layout; `plain` joins system, user and prefill with newlines instead (for base
models, the pairs' `--data.plain-text`).
"""

from __future__ import annotations

DEFAULT_SYSTEM = "You are a helpful assistant."


def render_chat(tokenizer, user: str, system: str | None, prefill: str | None = None,
                plain: bool = False) -> tuple[str, bool]:
    """The prompt text and whether a chat template made it (its text then holds the special tokens)."""
    if plain:
        return "\n".join(part for part in (system, user, prefill) if part), False
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": user})
        if prefill is None:
            return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)), True
        messages.append({"role": "assistant", "content": prefill})
        return str(tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)), True
    turn = "Assistant:" if prefill is None else f"Assistant: {prefill}"
    return f"{system}\n\nUser: {user}\n\n{turn}", False


def chat_ids(tokenizer, user: str, system: str | None = DEFAULT_SYSTEM, prefill: str | None = None) -> list[int]:
    """Token ids of `render_chat` (special tokens added only where no template wrote them)."""
    text, templated = render_chat(tokenizer, user, system, prefill)
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def conversation_ids(tokenizer, messages) -> list[int]:
    """Token ids of a conversation of (role, content) pairs, a system message first and the user's turn last,
    with the assistant turn opened. One system and one user message give exactly `chat_ids`; longer
    conversations go through the chat template the same way (or the plain `Role: text` layout)."""
    msgs = list(messages)
    if len(msgs) == 2:
        return chat_ids(tokenizer, msgs[1][1], msgs[0][1])
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in msgs],
                                             add_generation_prompt=True, tokenize=False)
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    turns = "\n\n".join(f"{r.capitalize()}: {c}" for r, c in msgs[1:])
    return list(tokenizer(f"{msgs[0][1]}\n\n{turns}\n\nAssistant:")["input_ids"])
