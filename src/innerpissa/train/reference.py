"""The reference pass: the adapted model at c = 0 (the base model) over every pair, once.

It gives the frozen preference direction (from the training pairs only) and, per pair, what the loss
compares against: the pos and neg projections on that direction and the log-probs of the shared-tail tokens.
Because c = 0 is exactly the base model, these never change during training and are cached instead of being
recomputed by a third forward at every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from innerpissa.data.batching import PairBatch
from innerpissa.train.directions import (
    CapturePoint,
    basis_singular_values,
    capture_pairs,
    default_loss_point,
    direction_from_diffs,
    gather_last,
    project,
    svd_basis,
)
from innerpissa.train.forward import TrainForward


def projections(hidden: Tensor, attention_mask: Tensor, basis: Tensor | None, direction: Tensor,
                pair_index: Tensor, n_tokens: int) -> Tensor:
    """Per row: mean over the last n tokens of the projected state on the direction -> [rows]."""
    h = project(gather_last(hidden, attention_mask, n_tokens), basis)  # [rows, n, r]
    d = direction.to(h.device)
    if d.dim() == 2:  # per-pair directions
        d = d[pair_index.to(d.device)][:, None]
    return (h * d).sum(-1).mean(-1)


@dataclass
class Reference:
    """Frozen direction and per-pair reference values (index = dataset pair index)."""

    point: CapturePoint
    basis: Tensor | None
    direction: Tensor
    n_tokens: int
    proj0: Tensor  # [N, 2]: reference projection of the pos and neg prompt
    tail_logp0: list[Tensor]  # per pair: [2, tail_len] reference log-probs of the shared-tail tokens

    @property
    def sep0(self) -> Tensor:
        return self.proj0[:, 0] - self.proj0[:, 1]

    def batch_values(self, batch: PairBatch, width: int) -> tuple[Tensor, Tensor]:
        """Cached (proj0 [rows], tail log-probs [rows, width] right-aligned, 0 outside the tail)."""
        idx = batch.pair_index[0::2].cpu()
        proj = self.proj0[idx].reshape(-1)
        logp = torch.zeros(len(idx) * 2, width)
        for k, i in enumerate(idx.tolist()):
            t = self.tail_logp0[i][:, -width:]
            logp[2 * k:2 * k + 2, width - t.shape[1]:] = t
        dev = batch.input_ids.device
        return proj.to(dev), logp.to(dev)

    def state_dict(self) -> dict:
        return {"module": self.point.module, "where": self.point.where, "basis": self.basis,
                "direction": self.direction, "n_tokens": self.n_tokens, "proj0": self.proj0,
                "tail_logp0": self.tail_logp0}

    @classmethod
    def from_state_dict(cls, sd: dict) -> Reference:
        return cls(CapturePoint(sd["module"], sd["where"]), sd["basis"], sd["direction"], int(sd["n_tokens"]),
                   sd["proj0"], list(sd["tail_logp0"]))


def tail_width(batch: PairBatch) -> int:
    return int(batch.tail_len.max())


@torch.no_grad()
def reference_pass(model: nn.Module, batches: Iterable[PairBatch], point: CapturePoint, basis: Tensor | None,
                   n_tokens: int, n_pairs: int) -> tuple[Tensor, list[Tensor], Tensor]:
    """(raw projected states [N, 2, n, r], tail log-probs per pair, which pairs were seen [N] bool): the one
    capture loop (`capture_pairs`) over the trainer's forward (the shared prefix once; the model as it is, c = 0)."""
    tails: list[Tensor] = [torch.empty(2, 0)] * n_pairs

    def forward(batch: PairBatch) -> Tensor:
        fwd = TrainForward(model, batch)
        logp, width = fwd.run(None).cpu(), tail_width(batch)
        for k, i in enumerate(batch.pair_index[0::2].tolist()):
            tails[i] = logp[2 * k:2 * k + 2, width - int(batch.tail_len[2 * k]):].clone()
        return fwd.mask()

    captured, index = capture_pairs(model, batches, [point], n_tokens, forward, lambda h: project(h, basis))
    pos, neg = captured[point.key]
    states = torch.zeros(n_pairs, 2, n_tokens, pos.shape[-1])
    states[index, 0], states[index, 1] = pos, neg
    seen = torch.zeros(n_pairs, dtype=torch.bool)
    seen[index] = True
    return states, tails, seen


def difference_dims(states: Tensor, k: int) -> Tensor:
    """The k coordinates with the largest |mean difference| pos - neg over projected states [N, 2, n, r]: the
    truncation that keeps the most of the mean difference's norm."""
    diff = (states[:, 0] - states[:, 1]).reshape(-1, states.shape[-1]).mean(0)
    return diff.abs().topk(k).indices


def direction_dims(states: Tensor, k: int, s: Tensor | None) -> Tensor:
    """The author's `adapter_dims` for the loss direction: from projected states [N, 2, n, r] (pos, neg), the
    k coordinates with the largest variance of coordinate / S over the positive prompts (k // 2) and then over
    the negative ones (the rest); every token of every pair is a sample. `s` None: raw variance."""
    from innerpissa.adapter.select import variance_select

    r = states.shape[-1]
    return variance_select(states[:, 0].reshape(-1, r), states[:, 1].reshape(-1, r), k,
                           None if s is None else s[:r])


def build_reference(model: nn.Module, train_batches: Iterable[PairBatch], val_batches: Iterable[PairBatch],
                    n_pairs: int, depth: float, module: str, where: str, basis_side: str,
                    basis_rank: int | None, method: str, n_tokens: int, dims: int | None = None,
                    dims_rule: str = "variance") -> Reference:
    """Reference pass over training and validation pairs; the direction comes from training pairs only.

    `dims`: keep only that many basis coordinates, zero elsewhere (`dims_rule`: `variance`, the author's
    `direction_dims`, or `difference`, the largest |mean difference|); None keeps all.
    """
    point = default_loss_point(model, depth, module, where)
    basis = svd_basis(model, point.module, basis_side, basis_rank)
    train_list, val_list = list(train_batches), list(val_batches)
    states, tails, seen = reference_pass(model, train_list + val_list, point, basis, n_tokens, n_pairs)
    train_idx = torch.cat([b.pair_index[0::2] for b in train_list]).cpu()
    keep = torch.ones(states.shape[-1])
    if dims is not None and dims < states.shape[-1]:
        sv = None if basis is None else basis_singular_values(model, point.module, basis_rank)
        keep = torch.zeros(states.shape[-1])
        chosen = (difference_dims(states[train_idx], dims) if dims_rule == "difference"
                  else direction_dims(states[train_idx], dims, sv))
        keep[chosen] = 1.0
    direction = direction_from_diffs((states[train_idx, 0] - states[train_idx, 1]) * keep, method)
    if method == "per_sample":  # validation pairs get their own per-pair direction too
        full = torch.zeros(n_pairs, direction.shape[-1])
        full[seen] = direction_from_diffs((states[seen, 0] - states[seen, 1]) * keep, method)
        direction = full
    d = direction[:, None, None, :] if direction.dim() == 2 else direction
    proj0 = (states * d).sum(-1).mean(-1)  # [N, 2]
    return Reference(point, basis, direction, n_tokens, proj0, tails)
