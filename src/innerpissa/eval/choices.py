"""The exact Yes/No token-id sets used to read a model's choice from one forward pass.

A token counts as "yes" when its decoded text, stripped of whitespace and lower-cased, is exactly "yes"
(likewise "no"). Exact matching matters: the author's substring rule also caught "eyes", "not" and "now",
which put probability mass on unrelated words into the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

YES_WORD = "yes"
NO_WORD = "no"


@dataclass(frozen=True)
class ChoiceIds:
    """Token ids whose text is exactly one answer word (after strip + lower)."""

    yes: tuple[int, ...]
    no: tuple[int, ...]

    def describe(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """A one-line listing (`id:'text'`) for reports, so a reader can check what was counted."""

        def fmt(ids: tuple[int, ...]) -> str:
            return ", ".join(f"{i}:{tokenizer.decode([i])!r}" for i in ids)

        return f"Yes = [{fmt(self.yes)}]; No = [{fmt(self.no)}]"


def normalise(text: str) -> str:
    """The comparison key of a token's text: whitespace stripped, lower-cased."""
    return text.strip().lower()


def ids_decoding_to(tokenizer: PreTrainedTokenizerBase, word: str) -> tuple[int, ...]:
    """All non-special token ids whose decoded text normalises to exactly `word`.

    Decodes every id of the vocabulary once, in one batched call (fast tokenizers do it in Rust).
    """
    word = normalise(word)
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    special = set(tokenizer.all_special_ids)
    return tuple(i for i, t in enumerate(texts) if i not in special and normalise(t) == word)


def choice_ids(tokenizer: PreTrainedTokenizerBase) -> ChoiceIds:
    """The Yes and No id sets of a tokenizer (cached on the tokenizer object: the scan costs ~0.5 s)."""
    cached = getattr(tokenizer, "_innerpissa_choice_ids", None)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    ids = ChoiceIds(yes=ids_decoding_to(tokenizer, YES_WORD), no=ids_decoding_to(tokenizer, NO_WORD))
    if not ids.yes or not ids.no:
        raise ValueError(f"tokenizer has no token that decodes to exactly 'yes' and 'no': {ids}")
    try:
        tokenizer._innerpissa_choice_ids = (len(tokenizer), ids)
    except AttributeError:  # some tokenizers forbid new attributes; scanning again is only slow
        pass
    return ids


def choice_logprobs(logprobs: torch.Tensor, ids: ChoiceIds) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(yes) and log P(no) from next-token log-probabilities `[..., vocab]` (logsumexp over each set)."""
    dev = logprobs.device
    yes = torch.logsumexp(logprobs[..., torch.tensor(ids.yes, device=dev)], dim=-1)
    no = torch.logsumexp(logprobs[..., torch.tensor(ids.no, device=dev)], dim=-1)
    return yes, no
