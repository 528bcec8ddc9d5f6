"""The training loss (METHOD.md section 5) as small pure functions over tensors.

Notation: rows come interleaved [pos, neg, pos, neg, ...]; `s_c` [B] is the separation of a pair's hidden
states along the frozen direction at coefficient c, `s_0` its reference value (c = 0, cached); `logp_*`
[2B, T] are next-token log-probs of the input tokens; `g_c` [B] is the change of the pair's log-prob gap
(pos minus neg, averaged over the shared-tail tokens) at c relative to c = 0.

Sign convention: c > 0 asks s_c above s_0, c < 0 swaps the roles of pos and neg, i.e. every term sees
sign(c) * s. `c` may be a float or a per-example tensor [B] (one batched forward for +1 and -1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PROJECTION_KINDS = ("logsigmoid", "raw")
MONO_ORDERINGS = ("batch", "sample", "forward", "reverse")
COH_ROWS = ("pos", "both")


# ------------------------------------------------------------------------------------ building blocks


def symlog(x: Tensor) -> Tensor:
    """sign(x) log(1 + |x|): linear near 0, logarithmic for large |x|, odd, and defined everywhere."""
    return torch.sign(x) * torch.log1p(x.abs())


def masked_row_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x [B, T] over each row's masked positions -> [B] (0 for an empty row)."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1).clamp(min=1)


def preference_gap(logp: Tensor, mask: Tensor) -> Tensor:
    """Per pair: mean log-prob of the shared-tail tokens on the pos row minus on the neg row -> [B]."""
    row = masked_row_mean(logp, mask)
    return row[0::2] - row[1::2]


def _sign(c: float | Tensor, like: Tensor) -> Tensor:
    sign = torch.sign(torch.as_tensor(c, dtype=like.dtype, device=like.device))
    if (sign == 0).any():
        raise ValueError("the projection loss is defined for c != 0 (c = 0 is the frozen reference)")
    return sign


def ref_scale(s_0: Tensor) -> Tensor:
    """Typical size of the reference separation, mean |s_0| (no gradient): the unit for `scale_to_ref`."""
    return s_0.detach().abs().nanmean().clamp(min=1e-6)


# ------------------------------------------------------------------------------------ loss terms


def projection_loss(
    s_c: Tensor,
    s_0: Tensor,
    *,
    c: float | Tensor = 1.0,
    kind: str = "logsigmoid",
    beta: float = 0.1,
    margin: float = 1.0,
    scale_to_ref: bool | float | Tensor = False,
    reduction: str = "mean",
) -> Tensor:
    """Reward moving the separation past the reference in the direction of sign(c).

    With x = sign(c) s_c / k and x0 = sign(c) s_0 / k (k = 1 by default):
      `logsigmoid`: -log sigmoid(beta (x - x0 - margin))   (bounded gradient, saturates once past margin)
      `raw`:        -(symlog(x) - symlog(|x0|))            (never saturates, grows only logarithmically)
    `scale_to_ref` sets k: True uses mean |s_0| of the batch, a number uses that (e.g. the dataset's mean
    |s_0|). Measured s_0 is ~28 +- 16 on SmolLM2 (METHOD.md section 10), so unscaled margin = 1 is tiny and
    the logsigmoid saturates at once; scaled, margin = 1 means "one more reference separation" and beta
    should be O(1..10) rather than 0.1.
    """
    if kind not in PROJECTION_KINDS:
        raise ValueError(f"unknown projection loss {kind!r}; use one of {PROJECTION_KINDS}")
    sign = _sign(c, s_c)
    s_0 = s_0.detach().to(s_c.dtype)
    if isinstance(scale_to_ref, bool):
        k = ref_scale(s_0) if scale_to_ref else torch.ones((), dtype=s_c.dtype, device=s_c.device)
    else:
        k = torch.as_tensor(scale_to_ref, dtype=s_c.dtype, device=s_c.device).detach()
    x, x0 = sign * s_c / k, sign * s_0 / k
    if kind == "logsigmoid":
        loss = -F.logsigmoid(beta * (x - x0 - margin))
    else:
        loss = -(symlog(x) - symlog(x0.abs()))
    if reduction == "none":
        return loss
    return loss.mean()


def coherence_barrier(
    logp_c: Tensor, logp_ref: Tensor, mask: Tensor, tau: float = 0.5, weight: float = 40.0
) -> Tensor:
    """weight * mean over masked tokens of log(1 + relu(logp_ref - logp_c - tau)).

    A trust region, not a penalty: zero while each token's log-prob dropped by at most tau nats, and
    growing only logarithmically past it, so it cannot swamp the projection term. Gains in log-prob are free.
    """
    v = F.relu(logp_ref.detach() - logp_c - tau)
    m = mask.to(v.dtype)
    return weight * (torch.log1p(v) * m).sum() / m.sum().clamp(min=1)


def ordering_violations(g_neg: Tensor, g_pos: Tensor, margin: float = 0.05) -> tuple[Tensor, Tensor]:
    """Per-pair hinge violations of the two allowed orderings, each [B]:
    forward g(-1) < -margin and g(+1) > margin; reverse g(+1) < -margin and g(-1) > margin."""
    fwd = F.relu(g_neg + margin) + F.relu(margin - g_pos)
    rev = F.relu(g_pos + margin) + F.relu(margin - g_neg)
    return fwd, rev


def monotonic_hinge(
    g_neg: Tensor, g_pos: Tensor, margin: float = 0.05, weight: float = 1.0, ordering: str = "batch"
) -> Tensor:
    """Penalise pairs whose log-prob gap change is not ordered g(-1) < 0 < g(+1) (or the mirror order).

    This removes the saddle where both c = +1 and c = -1 degrade the concept. The sign of the learned axis is
    arbitrary until calibration, so either ordering is allowed. `ordering`:
      `batch` (default): per batch, the ordering with the smaller mean violation, applied to every pair. A
        step therefore pushes all pairs toward one consistent axis; letting each pair pick (`sample`) can be
        satisfied by half the pairs going one way and half the other, i.e. no usable steering direction.
      `sample`: per-pair minimum of the two violations.
      `forward` / `reverse`: a fixed ordering (e.g. once calibration has fixed the sign).
    The choice itself is made without gradient (argmin), at a tie the forward ordering is taken.
    """
    if ordering not in MONO_ORDERINGS:
        raise ValueError(f"unknown ordering {ordering!r}; use one of {MONO_ORDERINGS}")
    fwd, rev = ordering_violations(g_neg, g_pos, margin)
    if ordering == "sample":
        viol = torch.minimum(fwd, rev)
    elif ordering == "forward":
        viol = fwd
    elif ordering == "reverse":
        viol = rev
    else:
        viol = torch.where(fwd.detach().mean() <= rev.detach().mean(), fwd, rev)  # no host sync
    return weight * viol.mean()


def ordered_fraction(g_neg: Tensor, g_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Fractions (0-d tensors, no host sync) of pairs ordered g(-1) < 0 < g(+1) (forward) and
    g(+1) < 0 < g(-1) (reverse); the validation metric of the issue is the forward one after calibration."""
    fwd = ((g_neg < 0) & (g_pos > 0)).float().mean()
    rev = ((g_pos < 0) & (g_neg > 0)).float().mean()
    return fwd, rev


# ------------------------------------------------------------------------------------ the total


@dataclass
class LossConfig:
    """Weights and shapes of the loss terms; defaults follow METHOD.md section 5."""

    kind: str = "logsigmoid"
    """Projection term: `logsigmoid` (bounded, saturates past the margin) or `raw` (symlog, never saturates)."""
    beta: float = 0.1
    """Sharpness of the logsigmoid term (use O(1) with scale_to_ref)."""
    margin: float = 1.0
    """How far past the reference the separation should move (in reference units with scale_to_ref)."""
    scale_to_ref: bool = False
    """Measure separations in units of the dataset's mean |s_0|, so beta and margin mean the same at any layer."""
    w_proj: float = 1.0
    """Weight of the projection term."""
    tau: float = 0.5
    """Coherence trust region: free log-prob drop per token, in nats."""
    w_coh: float = 40.0
    """Weight of the coherence barrier."""
    mono_margin: float = 0.05
    """Margin of the monotonic ordering hinge, in nats of log-prob gap."""
    w_mono: float = 10.0
    """Weight of the ordering hinge (keep below w_coh)."""
    mono_ordering: str = "forward"
    """Which ordering the hinge enforces: forward (g(-1) < 0 < g(+1): +1 means toward the positive persona by
    construction) | batch (v0: per batch, either ordering) | sample | reverse (see monotonic_hinge)."""
    mask_tokens: int = 4
    """Gap and coherence terms look at the last N shared-tail tokens only (the end of the suffix, as the
    author's last-4 mask); <= 0: the whole shared tail, template tokens included (v0)."""
    coh_rows: str = "pos"
    """Coherence barrier on the row playing "pos" at each c only (the pos prompt at +1, the neg prompt at -1,
    as the author) or on `both` rows (v0)."""

    def __post_init__(self) -> None:
        if self.kind not in PROJECTION_KINDS:
            raise ValueError(f"unknown projection loss {self.kind!r}; use one of {PROJECTION_KINDS}")
        if self.mono_ordering not in MONO_ORDERINGS:
            raise ValueError(f"unknown mono_ordering {self.mono_ordering!r}; use one of {MONO_ORDERINGS}")
        if self.coh_rows not in COH_ROWS:
            raise ValueError(f"unknown coh_rows {self.coh_rows!r}; use one of {COH_ROWS}")


def playing_pos_rows(mask: Tensor, c: float) -> Tensor:
    """`mask` [2B, T] restricted to the rows playing "pos" at c: the pos rows (even) at c > 0, the neg rows
    (odd) at c < 0, where the roles swap."""
    keep = torch.zeros(mask.shape[0], dtype=mask.dtype, device=mask.device)
    keep[(0 if c > 0 else 1)::2] = 1
    return mask * keep[:, None]


def _tag(c: float) -> str:
    return f"{c:+g}"


def combine(
    cfg: LossConfig,
    s: Mapping[float, Tensor | Mapping[str, Tensor]],
    s_0: Tensor | Mapping[str, Tensor],
    logp: Mapping[float, Tensor],
    logp_ref: Tensor,
    mask: Tensor,
    scale: float | Mapping[str, float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss summed over coefficients (and loss layers), and detached named terms for logging.

    `s[c]`: separations [B] at coefficient c, or a dict layer -> [B] (then `s_0` is a dict too);
    `logp[c]`, `logp_ref`: next-token log-probs [2B, T] of the interleaved rows; `mask`: the tokens the
    coherence and gap terms look at (the last `cfg.mask_tokens` shared-tail tokens, `suffix_end_mask`). `scale`: the `scale_to_ref`
    unit per layer (the dataset's mean |s_0|); None with `cfg.scale_to_ref` uses the batch's.
    Terms: proj{c}, coh{c}, mono, total, and diagnostics sep{c}, sep0, gap{c}, ordered_fwd, ordered_rev.
    """
    s0 = s_0 if isinstance(s_0, Mapping) else {"": s_0}
    terms: dict[str, Tensor] = {}
    total = logp_ref.new_zeros(())
    for c, s_c in s.items():
        layers = s_c if isinstance(s_c, Mapping) else {"": s_c}
        proj = logp_ref.new_zeros(())
        for name, sc in layers.items():
            k = scale.get(name) if isinstance(scale, Mapping) else scale
            proj = proj + projection_loss(sc, s0[name], c=c, kind=cfg.kind, beta=cfg.beta, margin=cfg.margin,
                                          scale_to_ref=(k if (cfg.scale_to_ref and k is not None) else cfg.scale_to_ref))
            terms[f"sep{_tag(c)}{'/' + name if len(layers) > 1 else ''}"] = sc.detach().mean()
        terms[f"proj{_tag(c)}"] = proj.detach()
        total = total + cfg.w_proj * proj
    for name, v in s0.items():
        terms[f"sep0{'/' + name if len(s0) > 1 else ''}"] = v.detach().mean()
    for c, lp in logp.items():
        coh_mask = playing_pos_rows(mask, c) if cfg.coh_rows == "pos" else mask
        coh = coherence_barrier(lp, logp_ref, coh_mask, cfg.tau, cfg.w_coh)
        terms[f"coh{_tag(c)}"] = coh.detach()
        total = total + coh
    if -1.0 in logp and 1.0 in logp:
        gap0 = preference_gap(logp_ref.detach(), mask)
        g_neg, g_pos = preference_gap(logp[-1.0], mask) - gap0, preference_gap(logp[1.0], mask) - gap0
        terms["gap-1"], terms["gap+1"] = g_neg.detach().mean(), g_pos.detach().mean()
        fwd, rev = ordered_fraction(g_neg.detach(), g_pos.detach())
        terms["ordered_fwd"], terms["ordered_rev"] = fwd, rev
        if cfg.w_mono > 0:
            mono = monotonic_hinge(g_neg, g_pos, cfg.mono_margin, cfg.w_mono, cfg.mono_ordering)
            terms["mono"] = mono.detach()
            total = total + mono
    terms["total"] = total.detach()
    return total, terms
