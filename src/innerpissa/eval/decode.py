"""Greedy continuations of a whole coefficient sweep in one decode, computing only what changes.

The rows of a generation sweep are (prompt, coefficient) pairs. Before the first new token they differ far
less than a batch of independent prompts:
- every prompt starts with the same chat header (template and system message): it runs once, as one row
  per coefficient, into a KV cache whose rows are then repeated for each row's own part;
- a prompt's own tokens are the same at every coefficient below the steerer's first steered block: those
  blocks run once per distinct prompt (`split.BlockSplit`), and only the blocks from there on run per row.
After the prompt, rows decode together one token per step with the KV cache, each at its own coefficient;
rows of one prompt whose continuations agree so far (common in the first tokens: small coefficients change
little) still share the blocks below the first steered block, which run once per distinct history.
The tokens equal those of one `generate` per coefficient (greedy, same positions and keys; tests and
bench/gen_speed.py check it); models without a plain `decoder.layers` layout use `generate` instead.
`prefill` and `decode_step` are the two halves, public for the server (`serve/batch.py`), whose rows join
and leave between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from innerpissa.split import (
    BlockSplit,
    common_prefix_len,
    continue_rows,
    decoder_parts,
    preallocate,
    select_rows,
)

MIN_HEADER = 2


def can_decode_sweep(model: nn.Module) -> bool:
    """Whether `decode_sweep` can run this model (plain decoder layout and linear output head)."""
    return decoder_parts(model) is not None and isinstance(model.get_output_embeddings(), nn.Linear)


@dataclass
class RowsState:
    """Rows decoding together, each at its own coefficients. The KV cache holds, in the blocks below the split
    (`BlockSplit.k`), one row per distinct history ("lower rows"), and from the split on one row per row;
    `group[i]` is row i's lower row; `lmask` [lower rows, T] and `lpos` [lower rows] are the lower rows'
    attention masks and last positions (a row's mask and positions are those of its lower row)."""

    cache: DynamicCache
    group: list[int]
    lmask: Tensor
    lpos: Tensor


def coeff_key(c) -> float | tuple[float, ...]:
    """A row's coefficient as a hashable key: a float (one adapter) or a tuple (one per adapter)."""
    return tuple(float(x) for x in c) if isinstance(c, tuple | list) else float(c)


@torch.no_grad()
def prefill(model: nn.Module, split: BlockSplit, encoded: Sequence[Sequence[int]], coeffs: Sequence,
            at_rows: Callable[[Tensor], AbstractContextManager], pad_id: int) -> tuple[RowsState, Tensor]:
    """Row i = prompt `encoded[i]` at coefficient `coeffs[i]` (a float, or a tuple with one per adapter):
    every row's prompt into one KV cache, computing only what differs (the common chat header below the
    split once, from the split on once per distinct coefficient; each distinct prompt's own tokens below the
    split once). `at_rows(c)` puts batch row j at c[j] (c: [rows] for floats, [rows, adapters] for tuples).
    Returns the rows' state and their next-token logits [rows, vocab] (float32)."""
    if len(encoded) != len(coeffs):
        raise ValueError(f"{len(encoded)} prompts but {len(coeffs)} coefficients")
    dev = next(model.parameters()).device
    uniq: dict[tuple[int, ...], int] = {}
    row_u = torch.tensor([uniq.setdefault(tuple(e), len(uniq)) for e in encoded], dtype=torch.long, device=dev)
    prompts = [list(e) for e in uniq]
    keys = [coeff_key(c) for c in coeffs]
    cvals: dict = {}
    row_c = torch.tensor([cvals.setdefault(c, len(cvals)) for c in keys], dtype=torch.long, device=dev)
    c_rows = torch.tensor(keys, device=dev)
    c_head = torch.tensor(list(cvals), device=dev)

    header = common_prefix_len(prompts)
    header = header if header >= MIN_HEADER else 0
    k, u = split.k, len(prompts)
    ids, _, full, pos = continue_rows([p[header:] for p in prompts], header, pad_id, dev)
    # one cache: blocks below k hold one row per distinct history ("lower rows"), blocks from k one per row
    cache = DynamicCache(config=model.config)
    head_ids = torch.tensor([prompts[0][:header]], dtype=torch.long, device=dev)

    def lower_header():
        return split.lower(head_ids, torch.ones_like(head_ids), torch.arange(header, device=dev)[None], cache)

    # below the first steered block: the header once, each distinct prompt's own part once
    head_low = None
    if header and k > 0:
        head_low = lower_header()
        select_rows(cache, torch.zeros(u, dtype=torch.long, device=dev), 0, k)
    own_low = split.lower(ids, full, pos, cache) if k > 0 else None
    # from the first steered block on: the header once per coefficient, then every row's own part
    if header:
        low = head_low if head_low is not None else lower_header()
        with at_rows(c_head):
            split.upper(low.rows(torch.zeros(len(cvals), dtype=torch.long, device=dev)))
        select_rows(cache, row_c, k)
    if own_low is None:  # nothing frozen: the embeddings of each prompt's own part, after the header's keys
        own_low = split.lower(ids, full, pos, cache)
    with at_rows(c_rows):
        hidden = split.upper(own_low.rows(row_u))
        logits = model.get_output_embeddings()(hidden[:, -1]).float()
    return RowsState(cache, row_u.tolist(), full, pos[:, -1]), logits


@torch.no_grad()
def decode_step(split: BlockSplit, head: nn.Module, state: RowsState, toks: Sequence[int]) -> Tensor:
    """Feed token `toks[i]` to row i, in the caller's steering state; returns the next-token logits [rows,
    vocab] (float32). `state` advances in place: rows of one lower row that take different tokens split it
    (its keys and values below the split are copied for each branch)."""
    dev = state.lpos.device
    keys: dict[tuple[int, int], int] = {}
    group = [keys.setdefault((g, t), len(keys)) for g, t in zip(state.group, toks, strict=True)]
    parent = torch.tensor([g for g, _ in keys], dtype=torch.long, device=dev)
    if len(keys) != state.lmask.shape[0] or bool((parent != torch.arange(len(keys), device=dev)).any()):
        select_rows(state.cache, parent, 0, split.k)
    state.group = group
    state.lmask = torch.cat([state.lmask[parent], state.lmask.new_ones(len(keys), 1)], 1)
    state.lpos = state.lpos[parent] + 1
    tok = torch.tensor([t for _, t in keys], dtype=torch.long, device=dev)
    low = split.lower(tok[:, None], state.lmask, state.lpos[:, None], state.cache)
    hidden = split.upper(low.rows(torch.tensor(group, dtype=torch.long, device=dev)))
    return head(hidden[:, -1]).float()


@torch.no_grad()
def decode_sweep(model: nn.Module, encoded: Sequence[Sequence[int]], coeffs: Sequence[float],
                 at_rows: Callable[[Tensor], AbstractContextManager], first_block: int, max_new_tokens: int,
                 eos: set[int], pad_id: int) -> list[list[int]]:
    """Greedy continuations (cut before the first end-of-sequence token) of row i = prompt `encoded[i]` at
    coefficient `coeffs[i]`. `at_rows(c)` puts batch row j at c[j] (a 1-D tensor); `first_block` is the
    lowest block it can change (0: nothing is shared below the steering)."""
    if len(encoded) != len(coeffs):
        raise ValueError(f"{len(encoded)} prompts but {len(coeffs)} coefficients")
    if max_new_tokens <= 0:
        return [[] for _ in encoded]
    split = BlockSplit(model, first_block)
    state, logits = prefill(model, split, encoded, coeffs, at_rows, pad_id)
    head = model.get_output_embeddings()
    preallocate(state.cache, max_new_tokens)
    c_rows = torch.tensor([coeff_key(c) for c in coeffs], device=logits.device)
    with at_rows(c_rows):  # one state for every decode step
        return _greedy(split, head, state, logits.argmax(-1), max_new_tokens, eos)


def _greedy(split: BlockSplit, head: nn.Module, state: RowsState, nxt: Tensor, max_new_tokens: int,
            eos: set[int]) -> list[list[int]]:
    """Greedy decoding of every row from its first new token `nxt`, in the caller's steering state."""
    n = len(state.group)
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for step in range(max_new_tokens):
        toks = nxt.tolist()
        for i, t in enumerate(toks):
            if not done[i]:
                if t in eos:
                    done[i] = True
                else:
                    out[i].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        nxt = decode_step(split, head, state, toks).argmax(-1)
    return out
