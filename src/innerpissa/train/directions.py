"""The frozen preference direction (METHOD.md section 4): where to read hidden states, and which axis.

The reference model (the adapted model at c = 0, i.e. the base model) is run on the training pairs; hidden
states at a loss point (a module's output or input, or `hidden_states[i]`) are read on the last N real tokens
(all shared-suffix tokens, so pos and neg are compared on identical text), projected into a basis (the output
basis `U` of an adapted module, the input basis `V` of a module reading the residual stream such as
`up_proj`, or the raw space), and the direction is the unit mean of pos - neg, the first principal axis of
the per-pair differences (sign aligned with the mean), or one unit direction per pair. The result is detached
and frozen: the adapter is trained to move hidden states along it, never to move it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from innerpissa.anatomy import (
    CapturePoint,
    HiddenCapture,
    StopForward,
    decoder_blocks,
    gather_last,
)

DIRECTION_METHODS = ("mean", "pca", "pca_aligned", "per_sample")


def default_loss_point(model: nn.Module, depth: float = 0.8, module: str = "mlp.up_proj",
                       where: str = "input") -> CapturePoint:
    """The author's later default: the input of block round(depth * L)'s `up_proj` (pair with basis 'V').

    That input is post-RMSNorm, so separations are small (SmolLM2-135M, block 24, 4 tokens: s0 ~ 0.26 raw
    or full V, ~2.3 in 'VS'); the pre-norm residual stream (the block's output) gives ~18 +- 10, the
    scale METHOD.md section 10 reports. Use `scale_to_ref` in the loss so margins do not depend on this.
    """
    prefix, n = decoder_blocks(model)
    block = min(n - 1, max(0, round(depth * n)))
    name = f"{prefix}.{block}.{module}" if module else f"{prefix}.{block}"
    model.get_submodule(name)  # clear error now, not at the first forward
    return CapturePoint(name, where)


BASIS_SIDES = ("U", "V", "VS", "raw")


def svd_basis(model: nn.Module, module: str, side: str, rank: int | None = None) -> Tensor | None:
    """A [d, r] projection basis from a module's weight W (d_out x d_in) = U diag(S) V^T.

    'U': output side (pair with the module's output). 'V': input side (pair with its input); coordinates
    V^T x are in the units of the (often normalised) input, so separations are small. 'VS': V diag(S),
    i.e. coordinates S * V^T x = U^T W x, the module's own output in its U basis: input directions weighted
    by how strongly the module reads them. 'raw': None (no projection).
    An adapter layer's frozen `U` / `S` / `V` buffers are used when present (the basis the adapter acts in);
    otherwise the SVD of `weight` is computed once in fp32. `rank` keeps the top-r directions.
    """
    if side == "raw":
        return None
    if side not in BASIS_SIDES:
        raise ValueError(f"basis side must be one of {BASIS_SIDES}, got {side!r}")
    mod = model.get_submodule(module)
    bufs = {k: getattr(mod, k, None) for k in ("U", "S", "V")}
    if all(isinstance(bufs[k], Tensor) for k in ("U", "S", "V")):
        u, sv, v = (bufs[k].detach().float() for k in ("U", "S", "V"))
    else:
        w = getattr(mod, "weight", None)
        if not isinstance(w, Tensor) or w.dim() != 2:
            raise ValueError(f"{module} has no 2-D weight and no U/S/V buffers to take a basis from")
        u, sv, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
        v = vh.T
    basis = u if side == "U" else v * sv if side == "VS" else v
    return (basis[:, :rank] if rank is not None else basis).contiguous()


def basis_singular_values(model: nn.Module, module: str, rank: int | None = None) -> Tensor:
    """The singular values S [k] paired with `svd_basis`'s columns (adapter buffers when present)."""
    mod = model.get_submodule(module)
    sv = getattr(mod, "S", None)
    if not isinstance(sv, Tensor):
        sv = torch.linalg.svdvals(mod.weight.detach().float())
    sv = sv.detach().float()
    return (sv[:rank] if rank is not None else sv).contiguous()


def project(hidden: Tensor, basis: Tensor | None) -> Tensor:
    """Coordinates of hidden states [..., d] in the basis [d, r] (raw when basis is None), in fp32."""
    h = hidden.float()
    if basis is None:
        return h
    if basis.shape[0] != h.shape[-1]:
        raise ValueError(f"basis has {basis.shape[0]} rows but hidden states have size {h.shape[-1]}; "
                         "U pairs with a module's output, V with its input")
    return h @ basis.to(h.device, torch.float32)


def _unit(x: Tensor, dim: int = -1) -> Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp(min=1e-12)


def direction_from_diffs(diffs: Tensor, method: str = "mean", k: int = 8, center: bool = False) -> Tensor:
    """A frozen unit direction from paired differences `diffs` [N, n, r] (or [N, r]), pos - neg.

    Per pair the token axis is averaged first, because the loss's separation s = mean_t(diff_t) . d is
    linear in that average. `mean`: unit mean over pairs. `pca`: first right singular vector of the per-pair
    differences (uncentered by default, as in the journal: the axis with the largest mean squared
    separation), sign aligned with the mean. `pca_aligned`: of the top-k components, the one most aligned
    with the mean (sign aligned). `per_sample`: one unit direction per pair, [N, r].
    """
    if method not in DIRECTION_METHODS:
        raise ValueError(f"unknown direction method {method!r}; use one of {DIRECTION_METHODS}")
    d = diffs.detach().float()
    per_pair = d.mean(1) if d.dim() == 3 else d  # [N, r]
    mean = per_pair.mean(0)
    if method == "mean":
        out = _unit(mean)
    elif method == "per_sample":
        out = _unit(per_pair)
    else:
        x = per_pair - mean if center else per_pair
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        comps = vh[: (1 if method == "pca" else min(k, vh.shape[0]))]
        best = 0 if method == "pca" else int((comps @ mean).abs().argmax())
        out = comps[best]
        if (out @ mean) < 0:
            out = -out
    return out.contiguous().requires_grad_(False)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def capture_pairs(model: nn.Module, batches: Iterable, points: Sequence[CapturePoint], n_tokens: int,
                  forward: Callable | None = None, transform: Callable | None = None, shared_tail: bool = True,
                  ) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor]:
    """The one capture loop (the vector baselines' activations and the trainer's reference pass): run the
    model over `PairBatch`es and return, per point key, (pos, neg) hidden states [N, n_tokens, d] on CPU in
    fp32 (`transform`ed first, e.g. projected into a basis), and the pairs' dataset indices [N]. Run it on the
    reference (c = 0) model.

    `forward(batch)` runs the pass and returns the attention mask of the states it produced (the reference
    pass uses the trainer's shared-prefix forward and keeps its log-probs); the default is a plain forward that
    stops at the last capture point (later blocks and the LM head are skipped). The last n tokens must lie in
    the pair's shared tail (identical text on both sides) unless `shared_tail` is False (repeng reads each
    prompt's last token, whatever it is).
    """
    store: dict[str, tuple[list[Tensor], list[Tensor]]] = {p.key: ([], []) for p in points}
    index: list[Tensor] = []
    dev = _device(model)
    with HiddenCapture(model, points, stop_early=forward is None) as cap:
        for batch in batches:
            batch = batch.to(dev)
            if shared_tail and int(batch.tail_len.min()) < n_tokens:
                raise ValueError(f"n_tokens={n_tokens} reaches past the shared suffix of some pairs "
                                 f"(shortest shared tail: {int(batch.tail_len.min())} tokens); lower it")
            if forward is not None:
                mask = forward(batch)
            else:
                mask = batch.attention_mask
                try:
                    cap.read_outputs(model(**batch.model_inputs(), output_hidden_states=cap.needs_hidden_states,
                                           use_cache=False))
                except StopForward:
                    pass
            for key, (pos, neg) in store.items():
                h = gather_last(cap.hidden[key], mask, n_tokens)
                h = (transform(h) if transform is not None else h).float().cpu()
                pos.append(h[0::2])
                neg.append(h[1::2])
            index.append(batch.pair_index[0::2].cpu())
            cap.hidden.clear()
    if not index:
        raise ValueError("no batches to compute a direction from")
    return {k: (torch.cat(p), torch.cat(n)) for k, (p, n) in store.items()}, torch.cat(index)
