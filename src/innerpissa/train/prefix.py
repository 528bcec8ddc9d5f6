"""Frozen-prefix reuse for training: the blocks below the first adapted block run once per batch.

Inside `frozen_prefix(model)`, the decoder blocks below the first adapted block are swapped for thin
wrappers. The first wrapper compares what enters the decoder's block loop (hidden states, position ids,
attention mask) with what it saw last:
- the same rows again (the -c forward after the +c one, or the c = 0 reference forward): the lower blocks are
  skipped and their recorded output is returned;
- the rows repeated (the batched +-c forward is the batch twice): they run on one copy only;
- anything else: they run normally and their output is recorded for the next forward.
Nothing below the first adapted block has a trainable parameter, so the recorded states carry no graph and
the results equal an ordinary forward's (the same operations on the same numbers). It stays off when a
lower block or the embeddings have a trainable parameter, when a module in a lower block has hooks (a
capture point there), when a KV cache is in use, or when the model has no plain `decoder.layers` layout
(`split.decoder_parts`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from innerpissa.split import decoder_parts, first_adapted_block


def _key(hidden: Tensor, kwargs: dict[str, Any]) -> tuple[Tensor, ...]:
    """The tensors that decide what the lower blocks compute (their inputs besides the weights)."""
    out = [hidden]
    for name in ("position_ids", "attention_mask"):
        v = kwargs.get(name)
        if isinstance(v, Tensor):
            out.append(v)
    return tuple(out)


def _rows(t: Tensor, n: int) -> int:
    return t.shape[0] if t.dim() > 0 and t.shape[0] == n else 0


def _same(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _repeats(key: tuple[Tensor, ...], unit: tuple[Tensor, ...], rows: int) -> int:
    """m when every batch-sized tensor of `key` is `unit` stacked m times along rows, else 0."""
    m_rows = key[0].shape[0]
    if rows == 0 or m_rows % rows or len(key) != len(unit):
        return 0
    m = m_rows // rows
    for x, u in zip(key, unit, strict=True):
        if _rows(x, m_rows):
            if x.shape[1:] != u.shape[1:] or u.shape[0] != rows or not torch.equal(x, u.repeat(m, *([1] * (u.dim() - 1)))):
                return 0
        elif not (x.shape == u.shape and torch.equal(x, u)):
            return 0
    return m


def _slice_rows(v: Any, n: int, rows: int) -> Any:
    """Keyword argument `v` restricted to the first `rows` of `n` batch rows (tuples recursively)."""
    if isinstance(v, Tensor):
        return v[:rows] if _rows(v, n) else v
    if isinstance(v, tuple):
        return tuple(_slice_rows(x, n, rows) for x in v)
    return v


class _Memo:
    """What the lower blocks saw and produced last, and the plan for the forward in progress."""

    def __init__(self):
        self.key: tuple[Tensor, ...] | None = None  # unit rows' inputs
        self.out: Tensor | None = None  # lower blocks' output for the unit rows
        self.mode = "run"  # "replay": return out (repeated); "half": run on unit rows and tile
        self.reps = 1
        self.unit_rows = 0
        self.hits = 0


class _Lower(nn.Module):
    """Wrapper of lower block `i` of `k` implementing the plan `_Memo` decides at block 0."""

    def __init__(self, block: nn.Module, i: int, k: int, memo: _Memo):
        super().__init__()
        self.block, self.i, self.k, self.memo = block, i, k, memo

    def forward(self, hidden_states: Tensor, *args, **kwargs):
        memo = self.memo
        if self.i == 0:
            self._plan(hidden_states, kwargs)
        if memo.mode == "replay":
            if self.i < self.k - 1:
                return hidden_states  # skipped: only the last lower block's output matters
            return memo.out.repeat(memo.reps, *([1] * (memo.out.dim() - 1)))
        n, u = hidden_states.shape[0], memo.unit_rows
        if memo.reps > 1:
            out = self.block(hidden_states[:u], *args, **{k: _slice_rows(v, n, u) for k, v in kwargs.items()})
        else:
            out = self.block(hidden_states, *args, **kwargs)
        h = out[0] if isinstance(out, tuple | list) else out
        if self.i == self.k - 1:
            memo.out = h.detach()
        return h.repeat(memo.reps, *([1] * (h.dim() - 1))) if memo.reps > 1 else h

    def _plan(self, hidden: Tensor, kwargs: dict[str, Any]) -> None:
        memo = self.memo
        key = _key(hidden, kwargs)
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None or torch.is_grad_enabled() \
                and hidden.requires_grad:
            memo.key, memo.mode, memo.reps, memo.unit_rows = None, "off", 1, hidden.shape[0]
            return
        if memo.key is not None and memo.out is not None:
            m = _repeats(key, memo.key, memo.key[0].shape[0])
            if m:
                memo.mode, memo.reps = "replay", m
                memo.hits += 1
                return
        n = hidden.shape[0]
        memo.mode, memo.reps, memo.unit_rows = "run", 1, n
        if n % 2 == 0:
            half = tuple(x[: n // 2] if _rows(x, n) else x for x in key)
            if _repeats(key, half, n // 2) == 2:
                memo.reps, memo.unit_rows, key = 2, n // 2, half
        memo.key = tuple(x.detach() for x in key)


def frozen_prefix_ok(model: nn.Module) -> int:
    """The number of lower blocks that can be reused (0 when reuse is not possible for this model)."""
    parts = decoder_parts(model)
    if parts is None:
        return 0
    decoder, layers, _ = parts
    k = first_adapted_block(model)
    emb = decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else None
    lower = [*layers[:k], *([emb] if emb is not None else [])]
    if any(p.requires_grad for m in lower for p in m.parameters()):
        return 0
    if any(m._forward_hooks or m._forward_pre_hooks for block in layers[:k] for m in block.modules()):
        return 0  # someone reads inside the lower blocks (e.g. a loss point there): they must really run
    return k


@contextmanager
def frozen_prefix(model: nn.Module, enabled: bool = True) -> Iterator[_Memo | None]:
    """Inside, forwards that repeat the previous forward's rows (or a batch of repeated rows) compute the
    blocks below the first adapted block once. Yields the memo (its `hits` count the skipped passes), or None
    when disabled or not possible."""
    k = frozen_prefix_ok(model) if enabled else 0
    if k == 0:
        yield None
        return
    _, layers, _ = decoder_parts(model)
    memo = _Memo()
    originals = [layers[i] for i in range(k)]
    for i in range(k):
        layers[i] = _Lower(originals[i], i, k, memo)
    try:
        yield memo
    finally:
        for i in range(k):
            layers[i] = originals[i]
