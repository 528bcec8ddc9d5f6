"""The training forward: one micro-batch of pairs at the training coefficients, computing only what changes.

A step runs the same rows at c = +1 and c = -1 (and at c = 0 when the reference is not cached). Two parts
of that work are the same in every one of those forwards, so they run once per micro-batch:
- **the shared prefix**: every row of a batch starts with the same tokens (chat template, system prompt and
  the instruction up to the persona word; about half of each row for the built-in pairs). The prefix runs as
  one row per coefficient into a KV cache whose rows are then repeated for each row's own remainder. The
  cache keeps its autograd graph, so every row's gradient reaches the prefix's keys and values exactly as in
  a whole-row forward.
- **the frozen blocks**: blocks below the first adapted block have no trainable parameter and do not depend
  on c; the prefix and the remainders go through them once (`split.BlockSplit`), and only the blocks from
  there on run per coefficient.
Both give the numbers of a plain forward over the left-padded rows (the same tokens at the same positions see
the same keys; only the float summation order differs), each has a switch (`TrainConfig.shared_prefix`,
`TrainConfig.frozen_prefix`) for the benchmark, and a model without a plain `decoder.layers` layout
(`split.decoder_parts`) runs whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from innerpissa.adapter import steer
from innerpissa.anatomy import decoder_and_head
from innerpissa.data.batching import PairBatch
from innerpissa.split import (
    BlockSplit,
    LowerState,
    common_prefix_len,
    continue_rows,
    decoder_parts,
    first_adapted_block,
    reset_from,
    select_rows,
    tile_index,
)

MIN_PREFIX = 2
"""Shorter common prefixes are not worth a cache: the rows then run whole."""


def tail_logprobs(head: nn.Module, hidden: Tensor, input_ids: Tensor, width: int) -> Tensor:
    """Next-token log-probs [rows, width] of the last `width` tokens of each (left-padded) row; the head runs
    on those `width` positions only."""
    logits = head(hidden[:, -width - 1:-1]).float()
    targets = input_ids[:, -width:]
    return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)


def forward_tail(model: nn.Module, batch: PairBatch, width: int) -> Tensor:
    """A plain forward of the whole rows; `tail_logprobs` of its last hidden state."""
    decoder, head = decoder_and_head(model)
    hidden = decoder(**batch.model_inputs(), use_cache=False).last_hidden_state
    return tail_logprobs(head, hidden, batch.input_ids, width)


def _at(model: nn.Module, cs: Sequence[float] | None, rows: int, device) -> AbstractContextManager:
    """The adapters at the coefficients `cs` for `rows` rows per coefficient (coefficient-major); None: the
    model as it is (e.g. no adapter attached)."""
    if cs is None:
        return nullcontext()
    if len(cs) == 1:
        return steer(model, float(cs[0]))
    return steer(model, torch.tensor([float(c) for c in cs], device=device).repeat_interleave(rows))


def _split_block(model: nn.Module) -> int:
    """The lowest block whose input may differ between coefficients: the first adapted block, or lower when
    a module in a lower block has hooks (a capture point there must see every forward)."""
    _, layers, _ = decoder_parts(model)
    k = first_adapted_block(model)
    for i in range(k):
        if any(m._forward_hooks or m._forward_pre_hooks for m in layers[i].modules()):
            return i
    return k


class TrainForward:
    """One micro-batch, laid out once; `run(cs)` gives its tail log-probs at the coefficients `cs`.

    Build it inside any `HiddenCapture` the caller reads (so a capture point in a lower block is seen); after
    `run`, a captured state has `len(cs) * rows` rows over the columns of `mask(len(cs))`.
    """

    def __init__(self, model: nn.Module, batch: PairBatch, shared_prefix: bool = True, frozen: bool = True):
        self.model, self.batch = model, batch
        self.rows = batch.input_ids.shape[0]
        self.prefix_len = 0
        self.split: BlockSplit | None = None
        self.cache = None
        self.lower: tuple[LowerState | None, LowerState] | None = None
        self.ids, self.own_mask = batch.input_ids, batch.attention_mask
        if decoder_parts(model) is None or not (shared_prefix or frozen):
            return
        _, self.head = decoder_and_head(model)
        self.split = BlockSplit(model, _split_block(model) if frozen else 0)
        dev = batch.input_ids.device
        am = batch.attention_mask.bool()
        seqs = [batch.input_ids[i][am[i]].tolist() for i in range(self.rows)]
        p = common_prefix_len(seqs) if shared_prefix else 0
        # each row keeps the token before its tail, so every tail log-prob comes from the row's own part
        p = min([p] + [len(s) - int(t) - 1 for s, t in zip(seqs, batch.tail_len.tolist(), strict=True)])
        if p >= MIN_PREFIX:
            self.prefix_len = p
            self.prefix_ids = torch.tensor([seqs[0][:p]], dtype=torch.long, device=dev)
            self.prefix_mask = torch.ones_like(self.prefix_ids)
            self.prefix_pos = torch.arange(p, device=dev)[None]
            pad = int(batch.input_ids[~am][0]) if (~am).any() else 0  # any id: padding is masked
            self.ids, self.own_mask, self.full_mask, self.pos = continue_rows([s[p:] for s in seqs], p, pad, dev)
            self.cache = DynamicCache(config=model.config)
        else:
            self.full_mask, self.pos = batch.attention_mask, batch.position_ids
        if self.split.k > 0:  # the lower blocks once, for every coefficient of this batch
            self.lower = self._lower_prefix(), self._lower_rest()

    # ------------------------------------------------------------------------------------------------------

    def _lower_prefix(self) -> LowerState | None:
        if not self.prefix_len:
            return None
        state = self.split.lower(self.prefix_ids, self.prefix_mask, self.prefix_pos, self.cache)
        if self.split.k > 0:  # the lower blocks' keys and values, one copy per row for the remainders
            select_rows(self.cache, torch.zeros(self.rows, dtype=torch.long, device=self.ids.device), 0)
        return state

    def _lower_rest(self) -> LowerState:
        return self.split.lower(self.ids, self.full_mask, self.pos, self.cache)

    def mask(self, m: int = 1) -> Tensor:
        """Attention mask of the rows whose states `run(cs)` leaves at a capture point (m = len(cs))."""
        return self.own_mask.repeat(m, 1)

    def run(self, cs: Sequence[float] | None) -> Tensor:
        """Tail log-probs [len(cs) * rows, width] (coefficient-major) with the adapters at each c of `cs`
        (None: the model as it is, one copy); `width` is the widest shared tail of the batch."""
        width = int(self.batch.tail_len.max())
        m, n, dev = len(cs) if cs is not None else 1, self.rows, self.batch.input_ids.device
        if self.split is None:
            b = self.batch
            inputs = b if m == 1 else PairBatch(b.input_ids.repeat(m, 1), b.attention_mask.repeat(m, 1),
                                                 b.position_ids.repeat(m, 1), b.pair_index.repeat(m),
                                                 b.is_positive.repeat(m), b.tail_len.repeat(m))
            with _at(self.model, cs, n, dev):
                return forward_tail(self.model, inputs, width)
        split, k = self.split, self.split.k
        if self.cache is not None:
            reset_from(self.cache, k)
        pre, rest = self.lower if self.lower is not None else (None, None)
        if self.prefix_len:
            if pre is None:
                pre = self._lower_prefix()
            with _at(self.model, cs, 1, dev):
                split.upper(pre.tile(m))
            # one copy of each coefficient's prefix keys/values per row (from block k on: below, done once)
            select_rows(self.cache, tile_index(torch.zeros(n, dtype=torch.long, device=dev), 1, m), k)
        if rest is None:
            rest = self._lower_rest()
        with _at(self.model, cs, n, dev):
            hidden = split.upper(rest.tile(m))
        return tail_logprobs(self.head, hidden, self.ids.repeat(m, 1), width)
