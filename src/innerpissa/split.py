"""Running a decoder in two parts: the blocks below a split once, the blocks from the split on many times.

The hidden states entering the first adapted block do not depend on the steering coefficient, so a sweep
over coefficients (or the +c / -c forwards of a training step) can compute them once. `BlockSplit` does this
on Hugging Face decoders whose blocks are called as `block(hidden, **kwargs)` with the same keyword
arguments (mask, rotary embeddings, position ids, cache) for every block, i.e. models without per-layer
attention types (Llama, SmolLM2, Qwen2/3 without sliding layers, Mistral). `lower()` runs the decoder with
a pre-hook on block k that records its input and those keyword arguments and stops the forward; `upper()`
runs blocks k.. and the final norm on a recorded state. Because the decoder itself built the mask, positions
and rotary embeddings, left padding and KV caches behave exactly as in an ordinary forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer

from innerpissa.anatomy import decoder_blocks


class _Stop(Exception):
    """Raised by the recording pre-hook once block k's input is captured."""


def _select_value(v: Any, n: int, index: Tensor) -> Any:
    """Keyword argument `v` with its batch dimension (size n) indexed by `index` (tuples recursively).

    Only tensors of two or more dimensions carry a batch dimension here (masks, position ids, rotary
    tables); 1-D tensors (cache positions) are left alone even when their length happens to equal n.
    """
    if isinstance(v, Tensor):
        return v.index_select(0, index.to(v.device)) if v.dim() > 1 and v.shape[0] == n else v
    if isinstance(v, tuple):
        return tuple(_select_value(x, n, index) for x in v)
    return v


@dataclass
class LowerState:
    """Block k's input hidden states [B, T, d] and the keyword arguments the decoder passed to block k."""

    hidden: Tensor
    kwargs: dict[str, Any]

    def rows(self, index: Tensor) -> LowerState:
        """The state of rows `index` (repeats allowed): hidden states and every batch-sized keyword argument."""
        n = self.hidden.shape[0]
        return LowerState(_select_value(self.hidden, n, index),
                          {k: _select_value(v, n, index) for k, v in self.kwargs.items()})

    def tile(self, m: int) -> LowerState:
        """The same state for m coefficients at once: rows repeated m times, coefficient-major."""
        if m == 1:
            return self
        n = self.hidden.shape[0]
        return self.rows(torch.arange(n, device=self.hidden.device).repeat(m))

    @property
    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()


def tile_index(idx: Tensor, n: int, m: int) -> Tensor:
    """Row indices into n rows, for m coefficient-major copies of them."""
    return (idx[None, :] + n * torch.arange(m, device=idx.device)[:, None]).reshape(-1)


def pad_rows(seqs, pad_id: int, left: bool) -> tuple[Tensor, Tensor]:
    """Token id rows padded to one width: (ids [B, T], attention mask [B, T]), padding on the left or right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def continue_rows(seqs, offset: int, pad_id: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Left-padded rows that continue a common prefix of `offset` tokens held in a KV cache: (ids, their own
    mask, the mask over prefix + own columns, positions counted on from the prefix)."""
    ids, own = pad_rows(seqs, pad_id, left=True)
    ids, own = ids.to(device), own.to(device)
    full = torch.cat([own.new_ones(own.shape[0], offset), own], 1)
    return ids, own, full, offset + (own.cumsum(-1) - 1).clamp(min=0)


def common_prefix_len(seqs) -> int:
    """Length of the longest common prefix, leaving every sequence at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return max(n, 0)


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module] | None:
    """(decoder, its block list, its final norm), or None when the model does not have that layout or uses
    different attention types per layer (then a block's keyword arguments are not shared by all blocks).
    The blocks are `anatomy.decoder_blocks`' list (the one rule), which must be a child of the decoder."""
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    if decoder is None or decoder is model:
        return None
    try:
        layers = model.get_submodule(decoder_blocks(model)[0])
    except ValueError:
        return None
    norm = getattr(decoder, "norm", None)
    if not any(layers is m for m in decoder.children()) or not isinstance(norm, nn.Module):
        return None
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if types is not None and len(set(types)) > 1:
        return None
    return decoder, layers, norm


def first_adapted_block(model: nn.Module) -> int:
    """Index of the lowest decoder block holding a coefficient-steered layer (0 when none is found).

    Blocks below it compute the same thing at every coefficient.
    """
    from innerpissa.adapter.model import adapter_layers

    parts = decoder_parts(model)
    if parts is None:
        return 0
    _, layers, _ = parts
    steered = {id(m) for m in adapter_layers(model).values()}
    for i, block in enumerate(layers):
        if any(id(m) in steered for m in block.modules()):
            return i
    return 0


class BlockSplit:
    """The decoder of `model` split before block `k` (0 <= k < number of blocks)."""

    def __init__(self, model: nn.Module, k: int):
        parts = decoder_parts(model)
        if parts is None:
            raise ValueError(f"{type(model).__name__}: no decoder.layers/decoder.norm layout with one attention "
                             "type; run the model whole (turn frozen-prefix reuse off)")
        self.decoder, self.layers, self.norm = parts
        if not 0 <= k < len(self.layers):
            raise ValueError(f"split block k={k} out of range for {len(self.layers)} blocks")
        self.k = k

    def lower(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache=None) -> LowerState:
        """Embeddings and blocks [0, k) (filling their part of `cache` when given); block k's input."""
        box: dict[str, Any] = {}

        def hook(_mod, args, kwargs):
            box["hidden"] = args[0] if args else kwargs["hidden_states"]
            box["kwargs"] = {key: v for key, v in kwargs.items() if key != "hidden_states"}
            raise _Stop

        handle = self.layers[self.k].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=cache is not None)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "hidden" not in box:
            raise RuntimeError("the decoder never reached the split block; is the model a standard decoder?")
        return LowerState(box["hidden"], box["kwargs"])

    def upper(self, state: LowerState) -> Tensor:
        """Blocks [k, L) and the final norm from a recorded state: the decoder's last hidden state."""
        h = state.hidden
        for block in self.layers[self.k:]:
            out = block(h, **state.kwargs)
            h = out[0] if isinstance(out, tuple | list) else out
        return self.norm(h)


# ---------------------------------------------------------------------------------------- cache surgery


def cache_layers(cache) -> list:
    """The per-layer entries of a transformers `DynamicCache` (each with `.keys` / `.values`)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"unsupported cache type {type(cache).__name__}: expected a DynamicCache with .layers")
    return layers


def _filled(layer) -> bool:
    """Whether a cache layer holds keys and values."""
    return getattr(layer, "is_initialized", False) and layer.keys is not None and bool(layer.keys.numel())


def select_rows(cache, index: Tensor, start: int = 0, stop: int | None = None) -> None:
    """In place: rows `index` of every initialized layer in [start, stop) (repeats allowed: one prefix per row)."""
    for layer in cache_layers(cache)[start:stop]:
        if isinstance(layer, _Growing):
            layer.select(index)
        elif _filled(layer):
            layer.keys = layer.keys.index_select(0, index.to(layer.keys.device))
            layer.values = layer.values.index_select(0, index.to(layer.values.device))


def reset_from(cache, start: int) -> None:
    """In place: empty the layers from `start` on (the blocks that are recomputed for each coefficient)."""
    for layer in cache_layers(cache)[start:]:
        if getattr(layer, "is_initialized", False):
            layer.reset()


@torch.no_grad()
def cache_bytes(cache) -> int:
    """Bytes held by the keys and values of a cache."""
    return sum(t.numel() * t.element_size() for layer in cache_layers(cache)
               if getattr(layer, "is_initialized", False) for t in (layer.keys, layer.values) if t is not None)


class _Growing(DynamicLayer):
    """A cache layer whose keys and values sit in a buffer with room for more tokens: decoding writes each
    step in place instead of concatenating the whole cache again (`DynamicLayer.update`)."""

    def __init__(self, layers: list, extra: int):
        """The rows of `layers` (filled cache layers) one after another, each left-padded with zeros to the
        longest one's length, with room for `extra` more tokens."""
        super().__init__()
        k0, v0 = layers[0].keys, layers[0].values
        self.device, self.is_initialized = k0.device, True
        self._n = max(ly.keys.shape[-2] for ly in layers)
        rows = sum(ly.keys.shape[0] for ly in layers)
        self._kb = k0.new_empty(rows, *k0.shape[1:-2], self._n + extra, k0.shape[-1])
        self._vb = v0.new_empty(rows, *v0.shape[1:-2], self._n + extra, v0.shape[-1])
        r = 0
        for ly in layers:
            b, pad = ly.keys.shape[0], self._n - ly.keys.shape[-2]
            for buf, t in ((self._kb, ly.keys), (self._vb, ly.values)):
                buf[r:r + b, ..., :pad, :] = 0  # masked out, but never NaN (0 * NaN would leak through)
                buf[r:r + b, ..., pad:self._n, :] = t
            r += b
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self._kb[..., :self._n, :], self._vb[..., :self._n, :]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        n = key_states.shape[-2]
        if self._n + n > self._kb.shape[-2]:  # out of room: grow the buffer (double), keep going
            more = max(n, self._kb.shape[-2])
            self._kb = torch.cat([self._kb, self._kb.new_empty(*self._kb.shape[:-2], more, self._kb.shape[-1])], -2)
            self._vb = torch.cat([self._vb, self._vb.new_empty(*self._vb.shape[:-2], more, self._vb.shape[-1])], -2)
        self._kb[..., self._n:self._n + n, :] = key_states
        self._vb[..., self._n:self._n + n, :] = value_states
        self._n += n
        self._view()
        return self.keys, self.values

    def select(self, index: Tensor) -> None:
        """Rows `index` (repeats allowed); only the filled columns are copied, the room after them stays."""
        index = index.to(self._kb.device)
        kb = self._kb.new_empty(index.shape[0], *self._kb.shape[1:])
        vb = self._vb.new_empty(index.shape[0], *self._vb.shape[1:])
        kb[..., :self._n, :] = self.keys.index_select(0, index)
        vb[..., :self._n, :] = self.values.index_select(0, index)
        self._kb, self._vb = kb, vb
        self._view()

    def trim(self, n: int) -> None:
        """Drop the first n columns (the room at the end stays)."""
        self._kb, self._vb, self._n = self._kb[..., n:, :], self._vb[..., n:, :], self._n - n
        self._view()


def preallocate(cache, extra: int) -> None:
    """In place, for inference: every initialized layer of `cache` gets room for `extra` more tokens, so a
    decode step writes its keys and values instead of copying the whole cache."""
    layers = cache_layers(cache)
    for i, layer in enumerate(layers):
        if _filled(layer):
            layers[i] = _Growing([layer], extra)


@torch.no_grad()
def join_rows(cache, other, extra: int) -> None:
    """In place, for inference: every layer of `cache` gets the rows of the same layer of `other` after its
    own, the shorter of the two left-padded with zeros to the longer's length (the caller extends the
    attention masks the same way), with room for `extra` more tokens. Rows continue to decode together."""
    mine, theirs = cache_layers(cache), cache_layers(other)
    if len(mine) != len(theirs):
        raise ValueError(f"caches of {len(mine)} and {len(theirs)} layers cannot be joined")
    joined = {}
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        if _filled(a) != _filled(b):
            raise ValueError(f"cache layer {i} is filled in one cache and empty in the other")
        if _filled(a):
            joined[i] = _Growing([a, b], extra)
    for i, layer in joined.items():  # all or nothing: a failure above leaves `cache` as it was
        mine[i] = layer


def trim_left(cache, n: int) -> None:
    """In place: drop the first n columns of every filled layer (columns that are padding in every row)."""
    if n <= 0:
        return
    layers = cache_layers(cache)
    for i, layer in enumerate(layers):
        if isinstance(layer, _Growing):
            layer.trim(n)
        elif _filled(layer):
            layers[i] = _Growing([layer], 0)
            layers[i].trim(n)
