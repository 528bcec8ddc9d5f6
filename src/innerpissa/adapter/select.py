"""Data-aware choice of the singular directions an adapter keeps (the author's `cho_var_snorm`, METHOD §2).

Plain PiSSA keeps the top-r singular triplets by S. The data-aware choice projects what the layer computes on
the positive and the negative prompts onto the full U, divides by S (so every direction is measured relative
to how strongly the weight uses it), and keeps the r/2 directions whose normalised coordinate varies most
over the positive prompts plus r/2 more (no duplicates) over the negative ones: the directions the task
actually exercises. `variance_select` is the pure rule; `select_adapter_directions` runs it on a model.

The chosen U, S, V become the layer's frozen buffers. They are saved with the adapter, so loading, merging
and LoRA export need no activations and work for any selection; c = 0 still skips the delta (the base model).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from innerpissa.adapter.layer import InnerPiSSALinear
from innerpissa.anatomy import StopForward, decoder_blocks, gather_last


def variance_select(z_pos: Tensor, z_neg: Tensor, k: int, s: Tensor | None = None) -> Tensor:
    """Sorted indices [k] of the coordinates to keep, from samples z_pos [n, d] and z_neg [m, d].

    With `s` [d] the coordinates are divided by it first (S-normalised). The k // 2 coordinates with the
    largest variance over the positive samples are taken, then the k - k // 2 largest over the negative
    samples among those not taken yet.
    """
    if z_pos.shape[-1] != z_neg.shape[-1]:
        raise ValueError(f"z_pos has {z_pos.shape[-1]} coordinates but z_neg {z_neg.shape[-1]}")
    d = z_pos.shape[-1]
    if not 1 <= k <= d:
        raise ValueError(f"cannot keep {k} of {d} coordinates; choose 1 <= k <= {d}")
    if s is not None:
        s = s.to(z_pos.dtype).clamp(min=1e-8)
        z_pos, z_neg = z_pos / s, z_neg / s
    return _select_from_variances(z_pos.var(0), z_neg.var(0), k)


def _select_from_variances(var_pos: Tensor, var_neg: Tensor, k: int) -> Tensor:
    first = torch.topk(var_pos, k // 2).indices
    rest = var_neg.clone()
    rest[first] = -float("inf")
    second = torch.topk(rest, k - k // 2).indices
    return torch.cat([first, second]).sort().values


class _Moments:
    """Running sum and sum of squares per coordinate (float64), for a variance without storing samples."""

    def __init__(self, d: int, device):
        self.n = 0
        self.s1 = torch.zeros(d, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(d, dtype=torch.float64, device=device)

    def add(self, z: Tensor) -> None:
        z = z.reshape(-1, z.shape[-1]).double()
        self.n += z.shape[0]
        self.s1 += z.sum(0)
        self.s2 += (z * z).sum(0)

    def var(self) -> Tensor:
        if self.n < 2:
            raise ValueError("need at least two samples to rank directions by variance")
        mean = self.s1 / self.n
        return ((self.s2 - self.n * mean * mean) / (self.n - 1)).clamp(min=0)  # unbiased, like Tensor.var


def full_svd(layer: InnerPiSSALinear) -> tuple[Tensor, Tensor, Tensor]:
    """All singular triplets (U [d_out, k], S [k], V [d_in, k]) of the layer's frozen weight, in the layer's dtype."""
    w = layer.base_layer.weight.detach().to(layer.U.dtype)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u, s, vh.T


def apply_selection(layer: InnerPiSSALinear, indices: Tensor, svd: tuple[Tensor, Tensor, Tensor] | None = None) -> None:
    """Make the layer keep the singular triplets `indices` [r] of its weight (sorted, as S is)."""
    if indices.numel() != layer.r:
        raise ValueError(f"selection has {indices.numel()} directions but the adapter's rank is {layer.r}")
    u, s, v = svd if svd is not None else full_svd(layer)
    idx = indices.to(u.device)
    with torch.no_grad():
        layer.U = u[:, idx].contiguous()
        layer.S = s[idx].contiguous()
        layer.V = v[:, idx].contiguous()
    layer._cache = None


@torch.no_grad()
def _stop(*_args) -> None:
    raise StopForward


def _last_block(model: nn.Module, layers) -> nn.Module | None:
    """The highest decoder block holding one of `layers` (None when the model has no plain block list)."""
    try:
        prefix, n = decoder_blocks(model)
    except (AttributeError, ValueError, TypeError):
        return None
    wanted = {id(m) for m in layers}
    blocks = [model.get_submodule(f"{prefix}.{i}") for i in range(n)]
    held = [b for b in blocks if any(id(m) in wanted for m in b.modules())]
    return held[-1] if held else None


def select_adapter_directions(model: nn.Module, batches: Iterable, n_tokens: int = 4) -> dict[str, Tensor]:
    """Choose and install, for every InnerPiSSA layer, the r singular directions the pairs exercise.

    Runs the model (adapter at c = 0, i.e. the base model) over `PairBatch`es of [pos, neg, ...] rows, reads
    each adapted layer's output W x on the last `n_tokens` real tokens, projects it onto the full U, divides
    by S and ranks by variance (`variance_select`). Returns the chosen indices per module name.
    """
    from innerpissa.adapter.model import adapter_layers

    layers = {n: m for n, m in adapter_layers(model).items() if isinstance(m, InnerPiSSALinear)}
    if not layers:
        raise RuntimeError("no InnerPiSSA layers to select directions for; attach the adapter first")
    if any(m.coeff != 0 if not isinstance(m.coeff, Tensor) else True for m in layers.values()):
        raise RuntimeError("select directions at c = 0 (the base model), outside any steer() context")
    svds = {n: full_svd(m) for n, m in layers.items()}
    moments = {n: (_Moments(svds[n][1].numel(), svds[n][1].device), _Moments(svds[n][1].numel(), svds[n][1].device))
               for n in layers}
    mask_box: dict[str, Tensor] = {}
    handles = []

    def hook_for(name: str, layer: InnerPiSSALinear):
        u, s, _ = svds[name]

        def hook(_mod, _args, out):
            y = out.detach().to(u.dtype)
            if layer.base_layer.bias is not None:
                y = y - layer.base_layer.bias.to(u.dtype)
            h = gather_last(y, mask_box["mask"], n_tokens)  # [rows, n, d_out]
            z = (h @ u) / s.clamp(min=1e-8)
            moments[name][0].add(z[0::2])
            moments[name][1].add(z[1::2])

        return hook

    for name, layer in layers.items():
        handles.append(layer.base_layer.register_forward_hook(hook_for(name, layer)))
    # nothing above the last adapted block is read: stop the forward there (no later blocks, no LM head)
    last = _last_block(model, layers.values())
    if last is not None:
        handles.append(last.register_forward_hook(_stop))
    dev = next(model.parameters()).device
    seen = 0
    try:
        for batch in batches:
            batch = batch.to(dev)
            mask_box["mask"] = batch.attention_mask
            try:
                model(**batch.model_inputs(), use_cache=False)
            except StopForward:
                pass
            seen += batch.n_pairs
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("no pairs to select the adapter's directions from")
    chosen = {}
    for name, layer in layers.items():
        idx = _select_from_variances(moments[name][0].var(), moments[name][1].var(), layer.r).cpu()
        apply_selection(layer, idx, svds[name])
        chosen[name] = idx
    return chosen
