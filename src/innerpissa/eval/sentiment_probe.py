"""A sentiment probe for sign checks: persona-free questions whose answer is prefilled up to an evaluative
word; the score is the mean of logsumexp log P(positive words) - logsumexp log P(negative words) at the next
position, in nats (higher = more cheerful). It responds to persona prompting (measured in docs/RESULTS.md),
which is what a probe used to fix or check a sign must do. Tokenised once; the model is scored as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from innerpissa.data.builtin import BUILTIN_DIR
from innerpissa.data.chat import DEFAULT_SYSTEM, chat_ids
from innerpissa.eval.harness import pad_left


def _first_ids(tokenizer, words: list[str]) -> list[int]:
    """First token id of each word (duplicates dropped)."""
    return sorted({tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words})


def sentiment_probe_fn(model, tokenizer, name: str = "sentiment_probe") -> Callable[..., torch.Tensor]:
    """`score(system=DEFAULT_SYSTEM)`: the probe's per-item scores [items] with that system message (prompting
    baselines pass their persona message; `calibrate_sign` detects the argument and bootstraps the items)."""
    data = json.loads((BUILTIN_DIR / f"{name}.json").read_text(encoding="utf-8"))
    pos, neg = _first_ids(tokenizer, data["positive"]), _first_ids(tokenizer, data["negative"])
    shared = set(pos) & set(neg)  # coarse tokenizers may start words of both lists with the same token
    pos, neg = [i for i in pos if i not in shared], [i for i in neg if i not in shared]
    if not pos or not neg:
        raise ValueError(f"probe {name}: the tokenizer gives its positive and negative words no distinct first "
                         "token; this probe cannot be used with it")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cache: dict[str, tuple] = {}

    @torch.no_grad()
    def score(system: str = DEFAULT_SYSTEM):
        if system not in cache:
            cache[system] = pad_left([chat_ids(tokenizer, u, system, p) for u, p in data["items"]], pad)
        ids, mask, position = cache[system]
        dev = next(model.parameters()).device
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=position.to(dev),
                       logits_to_keep=1).logits[:, -1].float()
        lp = torch.log_softmax(logits, -1)
        s = (lp[:, pos].logsumexp(-1) - lp[:, neg].logsumexp(-1)).cpu()
        return s

    return score
