"""A coefficient sweep that computes only what changes: shared prompt prefixes and frozen lower blocks.

Two savings, each with a switch, both giving the numbers of `harness.score_batch` (up to float rounding):
- **shared prefix**: the rows of one dilemma share every token up to their action; the group's common prefix
  runs once per coefficient into a KV cache, whose rows are then repeated for each row's own tail. The prompt
  NLL adds the prefix's token terms (computed once) to each row's tail terms.
- **frozen prefix**: blocks below the first steered block compute the same thing at every coefficient, so
  they run once per batch (`split.BlockSplit`), and only the blocks from there on run per coefficient.
The batch loop is outside the coefficient loop, so the frozen states live for one batch only: memory is
bounded by the batch size (`SweepStats` reports the peak bytes of cached states and keys/values).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from innerpissa.anatomy import check_context
from innerpissa.eval.choices import ChoiceIds, choice_logprobs
from innerpissa.split import (
    BlockSplit,
    LowerState,
    cache_bytes,
    common_prefix_len,
    pad_rows,
    reset_from,
    select_rows,
    tile_index,
)

SCORE_COLUMNS = ("logp_yes", "logp_no", "nll", "n_tokens")


@dataclass
class SweepStats:
    """What a sweep cached: peak bytes of frozen hidden states plus keys/values of one batch."""

    peak_bytes: int = 0
    batches: int = 0

    def see(self, nbytes: int) -> None:
        self.peak_bytes = max(self.peak_bytes, nbytes)


@dataclass(frozen=True)
class PrefixGroup:
    """Rows (indices into the encoded list) that share their first `prefix_len` tokens."""

    rows: tuple[int, ...]
    prefix_len: int


def prefix_groups(encoded: Sequence[Sequence[int]], keys: Sequence[Hashable] | None) -> list[PrefixGroup]:
    """Rows grouped by `keys` (e.g. dilemma index; None: every row alone), with their common prefix length."""
    by_key: dict[Hashable, list[int]] = {}
    for i in range(len(encoded)):
        by_key.setdefault(keys[i] if keys is not None else ("row", i), []).append(i)
    return [PrefixGroup(tuple(rows), common_prefix_len([encoded[r] for r in rows])) for rows in by_key.values()]


def group_batches(groups: Sequence[PrefixGroup], lengths: Sequence[int], batch_rows: int) -> list[list[PrefixGroup]]:
    """Groups in batches of about `batch_rows` rows, longest prefix first (little padding)."""
    order = sorted(groups, key=lambda g: (-g.prefix_len, -max(lengths[r] for r in g.rows), g.rows))
    out: list[list[PrefixGroup]] = []
    cur: list[PrefixGroup] = []
    n = 0
    for g in order:
        if cur and n + len(g.rows) > batch_rows:
            out.append(cur)
            cur, n = [], 0
        cur.append(g)
        n += len(g.rows)
    if cur:
        out.append(cur)
    return out


def token_nll(head, states: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Next-token NLL [n] of `states` [n, d] against `targets` [n], the head applied `chunk` rows at a time
    (full-vocabulary logits never exist for all positions at once; `head` may be the identity on logits)."""
    out = [F.cross_entropy(head(states[i:i + chunk]).float(), targets[i:i + chunk], reduction="none")
           for i in range(0, len(targets), chunk)]
    return torch.cat(out) if out else states.new_zeros(0, dtype=torch.float32)


def nll_chunk(vocab: int) -> int:
    """Positions per chunk of `token_nll`: about 64 MB of fp32 logits."""
    return max(1, (1 << 24) // vocab)


def finish_scores(last: torch.Tensor, nll_sum: torch.Tensor, n_tok: torch.Tensor, choices: ChoiceIds,
                  with_nll: bool) -> dict[str, np.ndarray]:
    """The score columns from the last position's logits and the rows' NLL sums and token counts."""
    logp_yes, logp_no = choice_logprobs(torch.log_softmax(last.float(), -1), choices)
    nll = nll_sum / n_tok.clamp(min=1) if with_nll else torch.full_like(nll_sum, float("nan"))
    return {"logp_yes": logp_yes.cpu().numpy(), "logp_no": logp_no.cpu().numpy(), "nll": nll.cpu().numpy(),
            "n_tokens": n_tok.cpu().numpy()}


class _RowsBatch:
    """One batch without prefix sharing: left-padded rows, lower blocks run once."""

    def __init__(self, split: BlockSplit, head, seqs, pad_id: int, dev, with_nll: bool, stats: SweepStats):
        self.split, self.head, self.with_nll = split, head, with_nll
        ids, mask = pad_rows(seqs, pad_id, left=True)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.ids, self.mask, self.pos = ids.to(dev), mask.to(dev), pos.to(dev)
        # with nothing frozen (k = 0) the embeddings run inside each coefficient's context, like a forward
        self.lower = split.lower(self.ids, self.mask, self.pos) if split.k > 0 else None
        pairs = (self.mask[:, :-1] & self.mask[:, 1:]).bool()
        self.rows_of, self.t_of = pairs.nonzero(as_tuple=True) if with_nll else (pairs.new_zeros(0, dtype=torch.long),) * 2
        self.targets = self.ids[:, 1:][self.rows_of, self.t_of]
        self.n_tok = pairs.sum(-1)
        self.stats = stats

    def score(self, choices: ChoiceIds, m: int = 1, at_rows: Callable | None = None) -> dict[str, np.ndarray]:
        """Scores of the rows at the current state; m > 1: `at_rows(n)` puts the model in m states for m
        coefficient-major copies of n rows, and the result has m x rows entries."""
        lower = self.lower or self.split.lower(self.ids, self.mask, self.pos)
        self.stats.see(m * lower.nbytes)
        with at_rows(self.ids.shape[0]) if at_rows else nullcontext():
            hidden = self.split.upper(lower.tile(m))
        n = self.ids.shape[0]
        rows_of = tile_index(self.rows_of, n, m)
        nll = token_nll(self.head, hidden[:, :-1][rows_of, self.t_of.repeat(m)], self.targets.repeat(m),
                        nll_chunk(self.head.out_features))
        nll_sum = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device).index_add_(0, rows_of, nll)
        return finish_scores(self.head(hidden[:, -1]), nll_sum, self.n_tok.repeat(m), choices, self.with_nll)


class _Stage:
    """One level of a prefix tree in a batch: rows of token ids continuing rows of the previous level."""

    def __init__(self, seqs, pad_id: int, left: bool, parent: torch.Tensor | None, offset: torch.Tensor,
                 prev_mask: torch.Tensor | None, dev):
        ids, mask = pad_rows(seqs, pad_id, left=left)
        self.ids, self.mask = ids.to(dev), mask.to(dev)
        self.parent = None if parent is None else parent.to(dev)
        self.pos = offset.to(dev)[:, None] + (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.full_mask = self.mask if prev_mask is None else torch.cat([prev_mask[self.parent], self.mask], 1)
        self.lens = self.mask.sum(-1)
        self.first = self.mask.argmax(-1)  # column of each row's first real token
        pairs = (self.mask[:, :-1] & self.mask[:, 1:]).bool()
        self.pair_r, self.pair_t = pairs.nonzero(as_tuple=True)
        self.targets = self.ids[:, 1:][self.pair_r, self.pair_t]
        self.lower: LowerState | None = None


class _PrefixBatch:
    """One batch of prefix groups as a prefix tree, each level run once into a KV cache per coefficient:
    the header all groups share (system, instruction, question), each group's own prefix, each row's tail.

    Upper levels are left padded (their last token is real), the tails right padded; positions continue the
    parent's, and the cache rows are repeated so each child row sees its parent's keys and values. The
    prompt NLL of a row adds the terms of every level on its path (each computed once).
    """

    def __init__(self, model, split: BlockSplit, head, encoded, groups: Sequence[PrefixGroup], pad_id: int, dev,
                 with_nll: bool, stats: SweepStats):
        self.split, self.head, self.with_nll, self.stats = split, head, with_nll, stats
        rows = [r for g in groups for r in g.rows]
        prefixes = [encoded[g.rows[0]][:g.prefix_len] for g in groups]
        header = common_prefix_len(prefixes)  # every group keeps at least one token of its own
        row_group = torch.tensor([gi for gi, g in enumerate(groups) for _ in g.rows], dtype=torch.long)
        p_len = torch.tensor([g.prefix_len for g in groups], dtype=torch.long)
        self.stages: list[_Stage] = []
        prev = None
        if header > 0:
            prev = _Stage([prefixes[0][:header]], pad_id, True, None, torch.zeros(1, dtype=torch.long), None, dev)
            self.stages.append(prev)
        mid = _Stage([p[header:] for p in prefixes], pad_id, True,
                     None if prev is None else torch.zeros(len(groups), dtype=torch.long),
                     torch.full((len(groups),), header, dtype=torch.long), None if prev is None else prev.full_mask, dev)
        self.stages.append(mid)
        tail = _Stage([encoded[r][g.prefix_len:] for g in groups for r in g.rows], pad_id, False, row_group,
                      p_len[row_group], mid.full_mask, dev)
        self.stages.append(tail)
        self.n_tok = torch.tensor([len(encoded[r]) - 1 for r in rows], dtype=torch.long, device=dev)
        self.cache = DynamicCache(config=model.config)
        if split.k > 0:  # blocks below k: each level once, the cache rows repeated for the next level
            for st in self.stages:
                if st.parent is not None:
                    select_rows(self.cache, st.parent)
                st.lower = split.lower(st.ids, st.full_mask, st.pos, self.cache)

    def score(self, choices: ChoiceIds, m: int = 1, at_rows: Callable | None = None) -> dict[str, np.ndarray]:
        """Scores of the rows at the current state; m > 1: m coefficients at once (coefficient-major), the
        model put in them by `at_rows(n)` for each level of n rows."""
        split, head, k = self.split, self.head, self.split.k
        chunk = nll_chunk(head.out_features)
        reset_from(self.cache, k)
        acc: torch.Tensor | None = None
        prev_h: torch.Tensor | None = None
        prev_n = 0
        held = 0
        for st in self.stages:
            n = st.ids.shape[0]
            parent = None if st.parent is None else tile_index(st.parent, prev_n, m)
            if parent is not None:
                select_rows(self.cache, parent, start=k)
            # k = 0: nothing is frozen, the embeddings run inside this coefficient's context like a forward
            lower = st.lower or split.lower(st.ids, st.full_mask, st.pos, self.cache)
            held += m * lower.nbytes
            with at_rows(n) if at_rows else nullcontext():
                h = split.upper(lower.tile(m))
            own = torch.zeros(n * m, dtype=torch.float32, device=h.device)
            if self.with_nll:
                pr = tile_index(st.pair_r, n, m)
                own.index_add_(0, pr, token_nll(head, h[:, :-1][pr, st.pair_t.repeat(m)], st.targets.repeat(m), chunk))
                if prev_h is not None:  # the parent's last state predicts this row's first token
                    first = st.ids[torch.arange(n, device=h.device), st.first].repeat(m)
                    own = own + token_nll(head, prev_h[parent, -1], first, chunk)
            acc = own if acc is None else acc[parent] + own
            prev_h, prev_n = h, n
        self.stats.see(cache_bytes(self.cache) + held)
        lens = self.stages[-1].lens.repeat(m)
        last = head(prev_h[torch.arange(prev_h.shape[0], device=prev_h.device), lens - 1])
        return finish_scores(last, acc, self.n_tok.repeat(m), choices, self.with_nll)


@torch.no_grad()
def score_sweep(model: PreTrainedModel, encoded: Sequence[Sequence[int]], choices: ChoiceIds, pad_id: int,
                coeffs: Sequence[float], at: Callable[[float], AbstractContextManager], first_block: int = 0,
                group_keys: Sequence[Hashable] | None = None, shared_prefix: bool = True,
                frozen_prefix: bool = True, batch_size: int = 8, with_nll: bool = True,
                progress: Callable | None = None, stats: SweepStats | None = None,
                at_many: Callable[[torch.Tensor], AbstractContextManager] | None = None) -> dict[float, pd.DataFrame]:
    """Scores (`SCORE_COLUMNS`, input order) of every prompt at every coefficient, batch loop outside.

    `at(c)` puts the model in state c (a `Steerer.at`); `first_block` is the lowest decoder block that state
    can change (0 when unknown: nothing is frozen). `group_keys` marks rows sharing a prompt prefix (the
    dilemma index); with `shared_prefix` off, or no keys, every row runs whole. The model must have a plain
    linear output head and a `decoder.layers` / `decoder.norm` layout (`split.decoder_parts`).
    `at_many(c)`, when given, puts the model in one state per batch row (a 1-D tensor of coefficients, as
    `adapter.steer` accepts): the blocks from `first_block` on then run every coefficient in one pass, which
    on a CPU reads each weight once per batch instead of once per coefficient.
    """
    check_context(model, [len(e) for e in encoded], what="prompt of row")
    dev = next(model.parameters()).device
    head = model.get_output_embeddings()
    split = BlockSplit(model, first_block if frozen_prefix else 0)
    stats = stats if stats is not None else SweepStats()
    lengths = [len(e) for e in encoded]
    groups = prefix_groups(encoded, group_keys if shared_prefix else None)
    batches = group_batches(groups, lengths, batch_size)
    out = {float(c): {k: np.zeros(len(encoded), dtype=np.int64 if k == "n_tokens" else np.float64)
                      for k in SCORE_COLUMNS} for c in coeffs}
    for batch in (progress(batches) if progress else batches):
        rows = [r for g in batch for r in g.rows]
        if shared_prefix and group_keys is not None:
            job = _PrefixBatch(model, split, head, encoded, batch, pad_id, dev, with_nll, stats)
        else:
            job = _RowsBatch(split, head, [encoded[r] for r in rows], pad_id, dev, with_nll, stats)
        if at_many is not None and len(coeffs) > 1:  # every coefficient in one pass: weights read once
            n = len(rows)
            cs = torch.tensor([float(c) for c in coeffs], device=dev)
            res = job.score(choices, len(coeffs), lambda k, cs=cs: at_many(cs.repeat_interleave(k)))
            for i, c in enumerate(coeffs):
                for k in SCORE_COLUMNS:
                    out[float(c)][k][rows] = res[k][i * n:(i + 1) * n]
        else:
            for c in coeffs:
                with at(c):
                    res = job.score(choices)
                for k in SCORE_COLUMNS:
                    out[float(c)][k][rows] = res[k]
        stats.batches += 1
    return {c: pd.DataFrame(v) for c, v in out.items()}
