"""Greedy continuations of a whole coefficient sweep in one decode, computing only what changes.

The rows of a generation sweep are (prompt, coefficient) pairs. Before the first new token they differ far
less than a batch of independent prompts:
- every prompt starts with the same chat header (template and system message): it runs once, as one row
  per coefficient, into a KV cache whose rows are then repeated for each row's own part;
- a prompt's own tokens are the same at every coefficient below the steerer's first steered block: those
  blocks run once per distinct prompt (`split.BlockSplit`), and only the blocks from there on run per row.
After the prompt, rows decode together one token per step with the KV cache, each at its own coefficient.
The tokens equal those of one `generate` per coefficient (greedy, same positions and keys; tests and
bench/gen_speed.py check it); models without a plain `decoder.layers` layout use `generate` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from innerpissa.split import BlockSplit, common_prefix_len, decoder_parts, pad_rows, select_rows

MIN_HEADER = 2


def can_decode_sweep(model: nn.Module) -> bool:
    """Whether `decode_sweep` can run this model (plain decoder layout and linear output head)."""
    return decoder_parts(model) is not None and isinstance(model.get_output_embeddings(), nn.Linear)


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
    dev = next(model.parameters()).device
    n = len(encoded)
    uniq: dict[tuple[int, ...], int] = {}
    row_u = torch.tensor([uniq.setdefault(tuple(e), len(uniq)) for e in encoded], dtype=torch.long, device=dev)
    prompts = [list(e) for e in uniq]
    cvals: dict[float, int] = {}
    row_c = torch.tensor([cvals.setdefault(float(c), len(cvals)) for c in coeffs], dtype=torch.long, device=dev)
    c_rows = torch.tensor([float(c) for c in coeffs], device=dev)
    c_head = torch.tensor(list(cvals), device=dev)

    header = common_prefix_len(prompts)
    header = header if header >= MIN_HEADER else 0
    split = BlockSplit(model, first_block)
    k, u = split.k, len(prompts)
    ids, own = pad_rows([p[header:] for p in prompts], pad_id, left=True)
    ids, own = ids.to(dev), own.to(dev)
    full = torch.cat([own.new_ones(u, header), own], 1)
    pos = header + (own.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    head_ids = torch.tensor([prompts[0][:header]], dtype=torch.long, device=dev)

    def lower_header():
        return split.lower(head_ids, torch.ones_like(head_ids), torch.arange(header, device=dev)[None], cache)

    # below the first steered block: the header once, each distinct prompt's own part once
    head_low = lower_header() if header and k > 0 else None
    if header and k > 0:
        select_rows(cache, torch.zeros(u, dtype=torch.long, device=dev), 0)
    own_low = split.lower(ids, full, pos, cache) if k > 0 else None
    if k > 0:
        select_rows(cache, row_u, 0)
    # from the first steered block on: the header once per coefficient, then every row's own part
    if header:
        low = head_low if head_low is not None else lower_header()
        with at_rows(c_head):
            split.upper(low.rows(torch.zeros(len(cvals), dtype=torch.long, device=dev)))
        select_rows(cache, row_c, k)
    if own_low is None:  # nothing frozen: the embeddings of each row's own part, after the header's keys
        own_low = split.lower(ids[row_u], full[row_u], pos[row_u], cache)
        rows_low = own_low
    else:
        rows_low = own_low.rows(row_u)
    with at_rows(c_rows):
        hidden = split.upper(rows_low)
    head = model.get_output_embeddings()
    nxt = head(hidden[:, -1]).float().argmax(-1)

    out = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=dev) if eos else None
    mask = full[row_u]
    last = pos[row_u][:, -1]
    for step in range(max_new_tokens):
        for i, t in enumerate(nxt.tolist()):
            if not done[i] and t not in eos:
                out[i].append(t)
        if eos_t is not None:
            done |= torch.isin(nxt, eos_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(n, 1)], 1)
        last = last + 1
        with at_rows(c_rows):
            logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], cache=cache,
                           use_cache=True, logits_to_keep=1).logits
        nxt = logits[:, -1].float().argmax(-1)
    return out
