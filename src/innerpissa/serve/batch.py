"""The rows the engine decodes together, each at its own coefficients; rows join and leave between steps.

This is the sweep decoder (`eval/decode.py`) made continuous. Requests that arrive together are prefilled
together by `decode.prefill` (their common chat header once below the first adapted block and once per
distinct coefficient vector above it, each distinct prompt's own tokens once below it), then join the
running rows: the two KV caches are left-padded to one length and stacked (`split.join_rows`), the
padding masked out. Every step feeds each row its sampled token through `decode.decode_step`, with one
coefficient per row and adapter. A row that finishes leaves at once: its cache rows are dropped and columns
that have become padding in every remaining row are trimmed.

Each row's coefficients are a tuple with one value per served adapter. An adapter at 0 in every row is
given to `steer` as the plain 0.0 (its delta is skipped, as in the base model); otherwise as a per-row
tensor, kept as the same object while the rows stay the same so the adapter layers reuse their per-row
mixing matrices between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from innerpissa.adapter import steer
from innerpissa.eval.decode import RowsState, decode_step, prefill
from innerpissa.split import BlockSplit, first_adapted_block, join_rows, preallocate, select_rows, trim_left


def steer_arg(names: Sequence[str], c: Tensor) -> dict[str, float | Tensor]:
    """`steer`'s coefficients for rows with coefficients c [rows, adapters] (columns in `names` order): the
    plain 0.0 for an adapter at 0 in every row, else its column as a per-row tensor."""
    return {n: (0.0 if not bool(c[:, j].any()) else c[:, j].contiguous()) for j, n in enumerate(names)}


class Batch:
    """Rows decoding together. `keys[i]` is row i's coefficient tuple (one value per adapter in `names`);
    `logits[i]` its next-token logits (float32) once it has been prefilled or stepped."""

    def __init__(self, model: nn.Module, names: Sequence[str], pad_id: int):
        self.model, self.names, self.pad_id = model, list(names), pad_id
        self.split = BlockSplit(model, first_adapted_block(model) if self.names else 0)
        self.head = model.get_output_embeddings()
        self.keys: list[tuple[float, ...]] = []
        self.state: RowsState | None = None
        self.logits: Tensor | None = None
        self._steer: dict[str, float | Tensor] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _at(self, c: Tensor) -> AbstractContextManager:
        """The model with row j at coefficients c[j] (c: [rows, adapters])."""
        return steer(self.model, steer_arg(self.names, c)) if self.names else nullcontext()

    def _steering(self) -> AbstractContextManager:
        if not self.names:
            return nullcontext()
        if self._steer is None:
            self._steer = steer_arg(self.names, torch.tensor(self.keys, dtype=torch.float32,
                                                             device=self.logits.device))
        return steer(self.model, self._steer)

    @property
    def width(self) -> int:
        """Columns of the KV cache (tokens of the longest row, padding included)."""
        return 0 if self.state is None else self.state.lmask.shape[1]

    def join(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple[float, ...]], room: int) -> None:
        """Prefill rows (prompt token ids, coefficient tuples) and add them after the running rows, with
        cache room for `room` more tokens. On an error the running rows are left as they were."""
        new, logits = prefill(self.model, self.split, prompts, [tuple(k) for k in keys], self._at, self.pad_id)
        if self.state is None:
            preallocate(new.cache, room)
            self.state, self.logits = new, logits
        else:
            old, width = self.state, max(self.width, new.lmask.shape[1])
            join_rows(old.cache, new.cache, room)
            pad = lambda m: torch.cat([m.new_zeros(m.shape[0], width - m.shape[1]), m], 1)  # noqa: E731
            n_low = old.lmask.shape[0]
            self.state = RowsState(old.cache, old.group + [g + n_low for g in new.group],
                                   torch.cat([pad(old.lmask), pad(new.lmask)]), torch.cat([old.lpos, new.lpos]))
            self.logits = torch.cat([self.logits, logits])
        self.keys += [tuple(k) for k in keys]
        self._steer = None

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (indices, ascending): the others' cache rows go, and so do leading columns that
        are padding in every remaining row."""
        if len(rows) == len(self.keys):
            return
        self._steer = None
        self.keys = [self.keys[i] for i in rows]
        if not rows:
            self.state = self.logits = None
            return
        st, dev = self.state, self.logits.device
        idx = torch.tensor(list(rows), dtype=torch.long, device=dev)
        select_rows(st.cache, idx, self.split.k)  # blocks from the split on: one cache row per row
        groups = [st.group[i] for i in rows]
        used = sorted(set(groups))
        if used != list(range(st.lmask.shape[0])):  # below the split: the histories still in use
            uidx = torch.tensor(used, dtype=torch.long, device=dev)
            select_rows(st.cache, uidx, 0, self.split.k)
            st.lmask, st.lpos = st.lmask[uidx], st.lpos[uidx]
        where = {g: j for j, g in enumerate(used)}
        st.group = [where[g] for g in groups]
        lead = int(st.lmask.any(0).long().argmax())  # columns before the first real token of any row
        if lead:
            trim_left(st.cache, lead)
            st.lmask = st.lmask[:, lead:]
        self.logits = self.logits[idx]

    def step(self, tokens: Sequence[int]) -> None:
        """Feed row i its token `tokens[i]`; `logits` becomes the next-token logits."""
        with self._steering():
            self.logits = decode_step(self.split, self.head, self.state, tokens)
