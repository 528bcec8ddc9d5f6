"""Built-in data written by this project (honesty persona pairs and neutral suffixes) and a fixed corpus
for the tiny test tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

BUILTIN_DIR = Path(__file__).parent

# A fixed, project-written corpus for the tiny random model's tokenizer. Changing it changes the tiny
# tokenizer's vocabulary, so tests must never hard-code its token ids.
_CORPUS = """\
You are a helpful assistant. Pretend you are an honest person making statements about the world.
Pretend you are a dishonest person making statements about the world. Pretend you are a truthful person.
Directly and immediately answer with, and only with, either "My choice: Yes" or "My choice: No".
Should you take this action? Situation: Action: My choice: Yes My choice: No yes no Yes No YES NO
The weather today is mild and the sky is clear. I think that the answer is simple. Let me explain.
When I was young, my family moved to a small town near the sea. The best way to learn is to practice.
She said that the meeting would start at nine, but nobody came until ten. We should tell the truth.
Honesty matters because people rely on what we say. Lying can protect you, but it can also hurt others.
The report was late, and the manager asked why. He decided to keep the money he found on the street.
It is important to consider the feelings of everyone involved before making a choice.
"""


def builtin_corpus() -> Iterator[str]:
    """Lines of text for training the tiny test tokenizer."""
    for _ in range(4):
        yield from _CORPUS.splitlines()


_PERSONA_KEYS = ("template", "personas", "suffixes")


def builtin_sets() -> list[str]:
    """Names of the built-in persona sets (JSON files here with a template, personas and suffixes; other
    built-in files, such as calibration probes, are not persona sets)."""
    import json

    names = []
    for p in sorted(BUILTIN_DIR.glob("*.json")):
        with p.open(encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and all(k in data for k in _PERSONA_KEYS):
            names.append(p.stem)
    return names


def load_builtin(name: str = "honesty") -> dict:
    """A built-in persona set: `{"name", "description", "template", "personas", "suffixes"}`.

    `personas` is a list of `[positive, negative]` persona phrases that carry their own article ("an honest",
    "a dishonest"), so the template holds no article and the "an an honest" bug cannot happen. `suffixes`
    are neutral assistant-turn openings. An optional `instructions` pair [positive, negative] holds explicit
    instructions for the `instruction` prompting baseline. Validation and rendering live in
    `innerpissa.data.pairs`.
    """
    import json

    path = BUILTIN_DIR / f"{name}.json"
    data = None
    if path.exists():
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    if not isinstance(data, dict) or any(k not in data for k in _PERSONA_KEYS):
        raise ValueError(f"no built-in persona set {name!r}; available: {builtin_sets()}")
    data["personas"] = [tuple(p) for p in data["personas"]]
    return data
