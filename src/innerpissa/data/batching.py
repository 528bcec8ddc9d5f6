"""Batches of contrastive pairs: interleaved [pos, neg, pos, neg, ...], left-padded, with masks.

Left padding puts every row's last real token at the last position, which is where the persona-conditioned
planning state is read (METHOD.md sections 3-4). Each row carries the dataset index of its pair
(`pair_index`) so a trainer can look up per-pair values cached from the reference model (c = 0), and the
length of the token tail the two sides share (`tail_len`: everything after the persona word, i.e. the rest of
the user turn and the assistant suffix), so losses can be restricted to tokens that are identical text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.utils.data import Dataset


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions as unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def common_tail(a: Sequence[int], b: Sequence[int]) -> int:
    """How many final tokens `a` and `b` share."""
    n = 0
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class TokenizedPair:
    index: int
    positive: list[int]
    negative: list[int]
    tail_len: int


@dataclass
class PairBatch:
    """Rows 2i and 2i+1 are the positive and negative prompt of pair `pair_index[2i]`."""

    input_ids: Tensor  # [2B, T] long
    attention_mask: Tensor  # [2B, T] long, left padded
    position_ids: Tensor  # [2B, T] long, from the mask
    pair_index: Tensor  # [2B] long, dataset index of each row's pair
    is_positive: Tensor  # [2B] bool: True, False, True, False, ...
    tail_len: Tensor  # [2B] long: shared trailing tokens of the pair (same value on both rows)

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def model_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for a Hugging Face forward, with explicit mask-derived position ids."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class PairDataset(Dataset):
    """Pre-tokenized pairs; item i is `TokenizedPair(i, pos_ids, neg_ids, tail_len)`.

    `add_special_tokens=None` (default) adds the tokenizer's special tokens (e.g. BOS) only to strings that
    do not already start with the BOS token, so chat-rendered strings whose template writes BOS itself
    (Llama 3, Gemma, Mistral) do not get two. `max_length` truncates from the left: the end of the prompt,
    where the planning state is read, is always kept.
    """

    def __init__(self, pairs: Sequence, tokenizer, add_special_tokens: bool | None = None,
                 max_length: int | None = None):
        self.items: list[TokenizedPair] = []
        bos = getattr(tokenizer, "bos_token", None)
        for i, pair in enumerate(pairs):
            ids = []
            for text in (pair.positive, pair.negative):
                add = add_special_tokens if add_special_tokens is not None else not (bos and text.startswith(bos))
                t = tokenizer(text, add_special_tokens=add)["input_ids"]
                if max_length is not None and len(t) > max_length:
                    t = t[-max_length:]
                if not t:
                    raise ValueError(f"pair {i} tokenizes to an empty sequence")
                ids.append(list(t))
            if ids[0] == ids[1]:
                raise ValueError(f"pair {i} tokenizes to identical sequences (max_length={max_length} cut "
                                 "off the persona word?)")
            tail = min(common_tail(*ids), min(len(ids[0]), len(ids[1])) - 1)
            self.items.append(TokenizedPair(i, ids[0], ids[1], max(tail, 0)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> TokenizedPair:
        return self.items[i]


def collate_pairs(items: Sequence[TokenizedPair], pad_token_id: int) -> PairBatch:
    """Interleave and left-pad a list of tokenized pairs into one `PairBatch`."""
    if not items:
        raise ValueError("cannot collate an empty list of pairs")
    rows = [ids for it in items for ids in (it.positive, it.negative)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, width - len(ids):] = 1
    return PairBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        pair_index=torch.tensor([it.index for it in items], dtype=torch.long).repeat_interleave(2),
        is_positive=torch.tensor([True, False] * len(items)),
        tail_len=torch.tensor([it.tail_len for it in items], dtype=torch.long).repeat_interleave(2),
    )


class PairCollator:
    """`collate_fn` for a `torch.utils.data.DataLoader` over a `PairDataset` (picklable for workers)."""

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to eos_token)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[TokenizedPair]) -> PairBatch:
        return collate_pairs(items, self.pad_token_id)
