"""Objectives on the model's own outputs (METHOD section 12): train c to move what the model writes after a
persona-free input, for any trainable kind (InnerPiSSA, LoRA(c), a trained vector).

Data, made once per run from the base model (c = 0) and saved in the run folder (`completions.json`):
- for each training pair, the greedy completions y+ and y- (`n_new_tokens`) of its positive and negative
  persona prompts (as the SFT baseline makes them);
- the persona-free input x: the pair's suffix after a neutral user turn (`user`), with the run's system
  message; the persona never appears in what the adapter is trained on.
A batch is a `PairBatch` whose rows 2i and 2i+1 are x+y+ and x+y- of pair i, left padded, with each row's
`tail_len` the length of its own completion, so `TrainForward` runs it (shared chat prefix once, frozen lower
blocks once) and its tail log-probs are the completion's. With l_c(y) = log p_c(y | x) / |y| (length
normalised, so long and short completions weigh alike) and s = sign(c):
- `pref`: reference-free bidirectional preference (SimPO/RePS-like): -log sigmoid(beta s (l_c(y+) - l_c(y-)) -
  margin). c = +1 prefers y+, c = -1 prefers y-; c = 0 is the base model by construction;
- `dpo`: the same with the base model as reference (BiPO): l_c - l_0 in place of l_c (l_0 cached);
- `sft`: -l_c(chosen): imitate the persona's completion from the persona-free input (context distillation of
  the persona, both ways in one adapter);
plus `w_nll` * -l_c(chosen) beside `pref`/`dpo` (an anchor that keeps the chosen completion likely, as CPO and
ORPO do). Validation reports the margin m(c) = l_c(y+) - l_c(y-) at c = -1, 0, +1 and the fraction of pairs
ordered m(-1) < m(0) < m(+1), the analogue of the inner loss's separation gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from innerpissa.data.batching import PairBatch, position_ids_from_mask

OUTPUT_KINDS = ("pref", "dpo", "sft")
NEUTRAL_USER = "Make statements about the world."


@dataclass
class ObjectiveConfig:
    """What training optimises: the seed's inner loss on hidden states (`inner`, METHOD section 5) or an
    objective on the model's own outputs (`pref`, `dpo`, `sft`; see `innerpissa.train.outputs`)."""

    kind: Literal["inner", "pref", "dpo", "sft"] = "inner"
    """`inner`: separation/shift of hidden states on the persona pairs (the seed's loss, with `loss.*`);
    `pref`: prefer the positive persona's own completion at c = +1 and the negative's at c = -1, from a
    persona-free input (reference-free); `dpo`: the same against the base model; `sft`: imitate them."""
    beta: float = 5.0
    """Preference sharpness on length-normalised log-probs (nats per token)."""
    margin: float = 0.0
    """Preference margin (in units of beta x nats per token): the loss saturates once exceeded."""
    w_nll: float = 0.0
    """Weight of the chosen completion's NLL beside `pref`/`dpo` (0: off)."""
    n_new_tokens: int = 24
    """Length of the base model's greedy completions of each persona prompt."""
    user: str = NEUTRAL_USER
    """The persona-free user turn that precedes each pair's suffix in what the adapter is trained on."""

    @property
    def on_outputs(self) -> bool:
        return self.kind in OUTPUT_KINDS


@dataclass(frozen=True)
class OutputItem:
    """One training pair as the output objectives see it: persona-free input and the two completions."""

    index: int
    x: list[int]
    y_pos: list[int]
    y_neg: list[int]


def collate_outputs(items: Sequence[OutputItem], pad_token_id: int) -> PairBatch:
    """Rows [x+y+, x+y-, ...], left padded; each row's `tail_len` is its own completion's length."""
    if not items:
        raise ValueError("cannot collate an empty list of output items")
    rows = [it.x + y for it in items for y in (it.y_pos, it.y_neg)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, seq in enumerate(rows):
        ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[r, width - len(seq):] = 1
    return PairBatch(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                     pair_index=torch.tensor([it.index for it in items], dtype=torch.long).repeat_interleave(2),
                     is_positive=torch.tensor([True, False] * len(items)),
                     tail_len=torch.tensor([len(y) for it in items for y in (it.y_pos, it.y_neg)], dtype=torch.long))


def completion_logprob(tail_logp: Tensor, tail_len: Tensor) -> Tensor:
    """Mean log-prob per completion token [rows] from right-aligned tail log-probs [rows, width]."""
    width = tail_logp.shape[-1]
    cols = torch.arange(width, device=tail_logp.device)
    m = (cols[None, :] >= (width - tail_len.to(tail_logp.device))[:, None]).to(tail_logp.dtype)
    return (tail_logp * m).sum(-1) / m.sum(-1).clamp(min=1)


def output_loss(cfg: ObjectiveConfig, l_c: dict[float, Tensor], l_0: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and named terms from length-normalised completion log-probs per coefficient: `l_c[c]` [rows]
    with rows [y+, y-, ...] of each pair; `l_0` the same at c = 0 (needed by `dpo`)."""
    if cfg.kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output objective {cfg.kind!r}; use one of {OUTPUT_KINDS}")
    if cfg.kind == "dpo" and l_0 is None:
        raise ValueError("the dpo objective needs the base model's completion log-probs (l_0)")
    terms: dict[str, Tensor] = {}
    total = torch.zeros((), device=next(iter(l_c.values())).device)
    for c, lc in l_c.items():
        if c == 0:
            raise ValueError("output objectives train at c != 0 (c = 0 is the base model)")
        s = 1.0 if c > 0 else -1.0
        pos, neg = lc[0::2], lc[1::2]
        chosen = pos if s > 0 else neg
        if cfg.kind == "sft":
            term = -chosen.mean()
        else:
            gap = pos - neg if cfg.kind == "pref" else (pos - l_0[0::2]) - (neg - l_0[1::2])
            term = -F.logsigmoid(cfg.beta * s * gap - cfg.margin).mean()
            if cfg.w_nll > 0:
                nll = -chosen.mean()
                terms[f"nll{c:+g}"] = nll.detach()
                term = term + cfg.w_nll * nll
        terms[f"{cfg.kind}{c:+g}"] = term.detach()
        terms[f"margin{c:+g}"] = (pos - neg).mean().detach()
        total = total + term
    terms["total"] = total.detach()
    return total, terms


def margins(l_by_c: dict[float, Tensor]) -> dict[str, float]:
    """Validation: mean margin m(c) = l(y+) - l(y-) at each c and the fraction of pairs with
    m(-1) < m(0) < m(+1) (needs c = -1, 0, +1)."""
    m = {c: (v[0::2] - v[1::2]) for c, v in l_by_c.items()}
    out = {f"margin{c:+g}": float(v.mean()) for c, v in m.items()}
    out["ordered"] = float(((m[-1.0] < m[0.0]) & (m[0.0] < m[1.0])).float().mean())
    return out
