"""Which contrastive pairs a run trains on (`DataConfig`) and the one function that draws them (`make_pairs`):
a pure function of the data settings and the seed, so every method of a comparison gets exactly the same pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from innerpissa.data.chat import DEFAULT_SYSTEM
from innerpissa.data.pairs import ContrastivePair, pairs_from_sources, shuffle_pairs, split_pairs


@dataclass
class DataConfig:
    """Where the contrastive pairs come from (built-in honesty set by default)."""

    builtin: str = "honesty"
    """Built-in persona set used when no files are given."""
    pairs_file: Path | None = None
    """Finished pairs: JSON, JSONL or CSV with `positive` and `negative` columns."""
    personas_file: Path | None = None
    """Persona word pairs (JSON [[pos, neg], ...] or CSV positive,negative) to combine with suffixes."""
    suffixes_file: Path | None = None
    """Assistant-turn suffixes, one per line (or a JSON list)."""
    template: str | None = None
    """Persona sentence with a `{persona}` slot (default: the built-in set's)."""
    system: str | None = DEFAULT_SYSTEM
    """Explicit system message for the chat template (some templates inject a default otherwise)."""
    plain_text: bool = False
    """Render pairs as plain text for tokenizers without a chat template."""
    n_pairs: int = 200
    """Pairs to use in all (training + validation); <= 0 for all of them."""
    val_fraction: float = 0.15
    """Fraction of pairs held out for validation."""
    max_length: int = 128
    """Truncate prompts from the left to this many tokens."""


def make_pairs(data: DataConfig, seed: int, tokenizer) -> tuple[list[ContrastivePair], list[ContrastivePair]]:
    """The (train, validation) contrastive pairs of a run with these data settings and seed."""
    pairs = pairs_from_sources(tokenizer, pairs_file=data.pairs_file, personas_file=data.personas_file,
                               suffixes_file=data.suffixes_file, builtin=data.builtin, template=data.template,
                               system=data.system, plain_text=data.plain_text)
    if data.n_pairs > 0:
        pairs = shuffle_pairs(pairs, seed)[: data.n_pairs]
    return split_pairs(pairs, data.val_fraction, seed)
