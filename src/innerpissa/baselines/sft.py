"""Supervised LoRA (SFT) upper reference: imitate the model's own persona-conditioned answers without the persona.

For each training pair the model continues the positive (honest) and the negative (dishonest) prompt
greedily. Two LoRAs are then fine-tuned with next-token cross-entropy to produce those continuations after a
*neutral* user turn (the persona sentence replaced by a persona-free one): LoRA+ on the honest answers,
LoRA- on the dishonest ones. `c = +1` switches LoRA+ in, `c = -1` LoRA-, and |c| scales it. Unlike
InnerPiSSA it needs generated completions (labels of a sort), so it is an upper reference, not a peer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from innerpissa.adapter import adapter_parameters, steer
from innerpissa.adapter.config import AdapterConfig
from innerpissa.adapter.lora import attach_lora
from innerpissa.baselines.common import SignedSteerer
from innerpissa.data.chat import render_chat
from innerpissa.data.pairs import ContrastivePair
from innerpissa.steering import tensor_digest

NEUTRAL_USER = "Make statements about the world."


@torch.no_grad()
def greedy_continuations(model: nn.Module, tok, prompts: Sequence[str], max_new_tokens: int = 24,
                         batch_size: int = 16) -> list[str]:
    """Greedy continuations of already rendered prompts (`eval.generation.generate_ids`, batches of
    `batch_size`), decoded without special tokens."""
    from innerpissa.eval.generation import generate_ids

    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[str] = []
    for i in range(0, len(ids), batch_size):
        out += [tok.decode(x, skip_special_tokens=True) for x in generate_ids(model, tok, ids[i:i + batch_size],
                                                                             max_new_tokens)]
    return out


def sft_examples(tok, pairs: Sequence[ContrastivePair], completions: Sequence[str],
                 system: str | None) -> list[tuple[list[int], int]]:
    """(token ids, number of prompt tokens) per example: a persona-free user turn and the pair's suffix
    (its `group`), then the completion the persona-conditioned model wrote."""
    items = []
    for pair, completion in zip(pairs, completions, strict=True):
        if pair.group is None:
            raise ValueError("SFT needs pairs built from personas x suffixes (each pair's group is its suffix)")
        prompt, _ = render_chat(tok, NEUTRAL_USER, system, pair.group)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(completion, add_special_tokens=False)["input_ids"]
        if c_ids:
            items.append((p_ids + c_ids, len(p_ids)))
    return items


def _batch(items: Sequence[tuple[list[int], int]], pad: int) -> tuple[Tensor, Tensor, Tensor]:
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100)
    for r, (seq, n_prompt) in enumerate(items):
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
        labels[r, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, mask, labels


def train_sft_lora(model: nn.Module, tok, items: Sequence[tuple[list[int], int]], epochs: int = 2,
                   lr: float = 1e-3, batch_size: int = 8, seed: int = 0) -> tuple[list[Tensor], list[float]]:
    """Fine-tune the attached LoRA (at c = 1) on `items`; returns its parameters and the mean loss per epoch."""
    params = adapter_parameters(model)
    opt = torch.optim.AdamW(params, lr=lr)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    losses = []
    with steer(model, 1.0):
        for _ in range(epochs):
            order = torch.randperm(len(items), generator=g).tolist()
            total = 0.0
            for k in range(0, len(order), batch_size):
                ids, mask, labels = (t.to(dev) for t in _batch([items[i] for i in order[k:k + batch_size]],
                                                               tok.pad_token_id))
                loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                total += float(loss.detach()) * len(order[k:k + batch_size])
            losses.append(total / len(order))
    return [p.detach().clone() for p in params], losses


class SFTSteerer(SignedSteerer):
    """c > 0 runs LoRA+ at scale c, c < 0 LoRA- at scale |c|; c = 0 is the base model."""

    name = "sft"
    default_coeffs = (-1.0, -0.5, 0.0, 0.5, 1.0)

    def __init__(self, model: nn.Module, plus: list[Tensor], minus: list[Tensor], coeffs=None):
        self.model, self.plus, self.minus = model, plus, minus
        if coeffs is not None:
            self.default_coeffs = tuple(coeffs)

    def fingerprint(self) -> str:
        return tensor_digest([*self.plus, *self.minus], "sft", self.sign)

    @contextmanager
    def applied(self, c: float) -> Iterator[None]:
        with torch.no_grad():
            for p, v in zip(adapter_parameters(self.model), self.plus if c > 0 else self.minus, strict=True):
                p.copy_(v)
        with steer(self.model, abs(c)):
            yield


def build_sft(model: nn.Module, tok, pairs: Sequence[ContrastivePair], adapter: AdapterConfig,
              system: str | None = "You are a helpful assistant.", max_new_tokens: int = 24, epochs: int = 2,
              lr: float = 1e-3, seed: int = 0, coeffs=None) -> tuple[SFTSteerer, dict]:
    """Generate persona-conditioned continuations, train LoRA+ and LoRA-, return the steerer (LoRA attached)."""
    pos = greedy_continuations(model, tok, [p.positive for p in pairs], max_new_tokens)
    neg = greedy_continuations(model, tok, [p.negative for p in pairs], max_new_tokens)
    attach_lora(model, adapter)
    init = [p.detach().clone() for p in adapter_parameters(model)]
    plus, loss_plus = train_sft_lora(model, tok, sft_examples(tok, pairs, pos, system), epochs, lr, seed=seed)
    with torch.no_grad():
        for p, v in zip(adapter_parameters(model), init, strict=True):
            p.copy_(v)
    minus, loss_minus = train_sft_lora(model, tok, sft_examples(tok, pairs, neg, system), epochs, lr,
                                       seed=seed)
    return SFTSteerer(model, plus, minus, coeffs), {"loss_plus": loss_plus, "loss_minus": loss_minus,
                                                     "example_plus": pos[0], "example_minus": neg[0]}
