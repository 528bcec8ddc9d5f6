"""Loss terms on hand-made tensors: known values, hand-derived gradients, and finite-difference checks."""

from __future__ import annotations

import math

import pytest
import torch

from innerpissa.train.losses import (
    LossConfig,
    coherence_barrier,
    combine,
    masked_row_mean,
    monotonic_hinge,
    ordered_fraction,
    ordering_violations,
    playing_pos_rows,
    preference_gap,
    projection_loss,
    ref_scale,
    symlog,
)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_symlog_values_and_oddness():
    x = torch.tensor([0.0, math.e - 1, -(math.e - 1), math.e**2 - 1])
    assert torch.allclose(symlog(x), torch.tensor([0.0, 1.0, -1.0, 2.0]), atol=1e-6)
    y = torch.randn(20, dtype=torch.float64)
    assert torch.allclose(symlog(-y), -symlog(y))
    g = torch.tensor([3.0], requires_grad=True)
    symlog(g).sum().backward()
    assert g.grad.item() == pytest.approx(1 / 4)  # d/dx log(1 + x) at 3


def test_logsigmoid_value_and_grad():
    s_c = torch.tensor([3.0], requires_grad=True)
    s_0 = torch.tensor([1.0], requires_grad=True)
    loss = projection_loss(s_c, s_0, kind="logsigmoid", beta=0.5, margin=1.0)
    # x = 0.5 (3 - 1 - 1) = 0.5
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)
    loss.backward()
    assert s_c.grad.item() == pytest.approx(-0.5 * sigmoid(-0.5), rel=1e-6)
    assert s_0.grad is None  # the reference is a constant


def test_negative_coefficient_swaps_roles():
    s_c = torch.tensor([3.0, 3.0], requires_grad=True)
    s_0 = torch.tensor([1.0, 1.0])
    c = torch.tensor([1.0, -1.0])
    per = projection_loss(s_c, s_0, c=c, kind="logsigmoid", beta=0.5, margin=1.0, reduction="none")
    # c = -1: x = 0.5 (-3 + 1 - 1) = -1.5
    assert per[0].item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)
    assert per[1].item() == pytest.approx(math.log1p(math.exp(1.5)), rel=1e-6)
    per.sum().backward()
    assert s_c.grad[1].item() == pytest.approx(0.5 * sigmoid(1.5), rel=1e-6)  # pushes s_{-1} down
    float_c = projection_loss(s_c[1:], s_0[1:], c=-1.0, kind="logsigmoid", beta=0.5, margin=1.0)
    assert float_c.item() == pytest.approx(per[1].item())


def test_raw_value_and_grad():
    s_c = torch.tensor([math.e - 1], requires_grad=True)
    s_0 = torch.tensor([-(math.e**2 - 1)])
    loss = projection_loss(s_c, s_0, kind="raw")
    assert loss.item() == pytest.approx(-(1.0 - 2.0), rel=1e-6)  # -(symlog(s_c) - symlog(|s_0|))
    loss.backward()
    assert s_c.grad.item() == pytest.approx(-1 / math.e, rel=1e-6)


def test_scale_to_ref():
    s_c = torch.tensor([30.0, -10.0])
    s_0 = torch.tensor([10.0, -10.0])
    # k = 10: x - x0 - margin = (30 - 10)/10 - 1 = 1 and (-10 + 10)/10 - 1 = -1
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    for k in (10.0, True):  # True: batch mean |s_0| = 10
        got = projection_loss(s_c, s_0, beta=1.0, margin=1.0, scale_to_ref=k)
        assert got.item() == pytest.approx(expected, rel=1e-6)


def test_projection_loss_errors():
    s = torch.ones(2)
    with pytest.raises(ValueError, match="c != 0"):
        projection_loss(s, s, c=0.0)
    with pytest.raises(ValueError, match="unknown projection loss"):
        projection_loss(s, s, kind="hinge")


@pytest.mark.parametrize("kind", ["logsigmoid", "raw"])
@pytest.mark.parametrize("scale", [False, True])
def test_projection_loss_gradcheck(kind, scale):
    torch.manual_seed(0)
    s_c = (torch.randn(5, dtype=torch.float64) * 3).requires_grad_()
    s_0 = torch.randn(5, dtype=torch.float64) * 3
    c = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: projection_loss(x, s_0, c=c, kind=kind, beta=0.3, margin=0.5, scale_to_ref=scale), (s_c,)
    )


def test_coherence_barrier_value_and_grad():
    logp_ref = torch.tensor([[0.0, -1.0, -2.0]])
    logp_c = torch.tensor([[0.0, -2.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1]])
    loss = coherence_barrier(logp_c, logp_ref, mask, tau=0.5, weight=2.0)
    # drops: [0, 1, -1]; v = relu(drop - 0.5) = [0, 0.5, 0]; mean over the 2 masked tokens
    assert loss.item() == pytest.approx(2.0 * math.log(1.5) / 2, rel=1e-6)
    loss.backward()
    assert torch.allclose(logp_c.grad, torch.tensor([[0.0, -2.0 / (2 * 1.5), 0.0]]))


def test_coherence_barrier_zero_inside_trust_region():
    logp_ref = torch.randn(4, 6)
    logp_c = (logp_ref - 0.4 + torch.rand(4, 6)).requires_grad_()  # every drop < tau
    loss = coherence_barrier(logp_c, logp_ref, torch.ones(4, 6), tau=0.5, weight=40.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logp_c.grad == 0)


def test_coherence_barrier_gradcheck():
    torch.manual_seed(1)
    logp_ref = torch.randn(3, 5, dtype=torch.float64)
    logp_c = (logp_ref - 2 * torch.rand(3, 5, dtype=torch.float64) - 0.6).requires_grad_()  # past tau
    mask = torch.rand(3, 5) > 0.3
    assert torch.autograd.gradcheck(lambda x: coherence_barrier(x, logp_ref, mask, 0.5, 3.0), (logp_c,))


def test_monotonic_hinge_orderings():
    g_neg = torch.tensor([-0.1, 0.2], requires_grad=True)
    g_pos = torch.tensor([0.2, 0.0], requires_grad=True)
    # forward violations [0, 0.25 + 0.05] mean 0.15; reverse [0.25 + 0.15, 0.05] mean 0.225
    assert monotonic_hinge(g_neg, g_pos, 0.05, 1.0, "forward").item() == pytest.approx(0.15)
    assert monotonic_hinge(g_neg, g_pos, 0.05, 1.0, "reverse").item() == pytest.approx(0.225)
    assert monotonic_hinge(g_neg, g_pos, 0.05, 1.0, "sample").item() == pytest.approx(0.025)
    loss = monotonic_hinge(g_neg, g_pos, 0.05, 2.0, "batch")  # picks forward
    assert loss.item() == pytest.approx(0.3)
    loss.backward()
    assert torch.allclose(g_neg.grad, torch.tensor([0.0, 1.0]))  # 2.0 * [0, 1/2]
    assert torch.allclose(g_pos.grad, torch.tensor([0.0, -1.0]))
    # mirror the data: the batch mode now picks the reverse ordering and gives the same loss
    assert monotonic_hinge(g_pos.detach(), g_neg.detach(), 0.05, 2.0, "batch").item() == pytest.approx(0.3)


def test_monotonic_hinge_zero_when_ordered_and_errors():
    g_neg, g_pos = torch.tensor([-0.2, -0.1]), torch.tensor([0.1, 0.3])
    assert monotonic_hinge(g_neg, g_pos, 0.05).item() == 0.0
    assert monotonic_hinge(g_pos, g_neg, 0.05).item() == 0.0  # the mirror order is allowed too
    with pytest.raises(ValueError, match="unknown ordering"):
        monotonic_hinge(g_neg, g_pos, ordering="both")
    fwd, rev = ordered_fraction(torch.tensor([-1.0, 1.0, -1.0, 1.0]), torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert (fwd.item(), rev.item()) == (0.25, 0.25)


@pytest.mark.parametrize("ordering", ["batch", "sample", "forward", "reverse"])
def test_monotonic_hinge_gradcheck(ordering):
    g_neg = torch.tensor([-0.3, 0.2, 0.01, 0.4], dtype=torch.float64, requires_grad=True)
    g_pos = torch.tensor([0.3, -0.2, 0.4, 0.02], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: monotonic_hinge(a, b, 0.05, 1.5, ordering), (g_neg, g_pos))


def test_masked_mean_and_gap():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 5.0, 1.0]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert masked_row_mean(x, mask).tolist() == [2.5, 1.0]
    assert preference_gap(x, mask).tolist() == [1.5]


def _toy_inputs(requires_grad=True):
    torch.manual_seed(3)
    B, T = 3, 4
    mask = torch.ones(2 * B, T)
    mask[:, 0] = 0
    logp_ref = -torch.rand(2 * B, T)
    logp = {c: (logp_ref - torch.rand(2 * B, T)).requires_grad_(requires_grad) for c in (1.0, -1.0)}
    s = {c: (torch.randn(B) * 5).requires_grad_(requires_grad) for c in (1.0, -1.0)}
    return s, torch.randn(B) * 5, logp, logp_ref, mask


def test_combine_is_sum_of_terms():
    cfg = LossConfig(kind="logsigmoid", beta=0.2, margin=1.0, w_coh=3.0, w_mono=2.0, tau=0.3, coh_rows="both",
                     mono_ordering="batch")
    s, s0, logp, logp_ref, mask = _toy_inputs()
    total, terms = combine(cfg, s, s0, logp, logp_ref, mask)
    expected = sum(projection_loss(s[c], s0, c=c, beta=0.2, margin=1.0) for c in (1.0, -1.0))
    expected = expected + sum(coherence_barrier(logp[c], logp_ref, mask, 0.3, 3.0) for c in (1.0, -1.0))
    gap0 = preference_gap(logp_ref, mask)
    mono = monotonic_hinge(preference_gap(logp[-1.0], mask) - gap0, preference_gap(logp[1.0], mask) - gap0,
                           0.05, 2.0)
    assert total.item() == pytest.approx((expected + mono).item(), rel=1e-6)
    parts = sum(terms[k] for k in ("proj+1", "proj-1", "coh+1", "coh-1", "mono"))
    assert terms["total"].item() == pytest.approx(parts.item(), rel=1e-6)
    assert {"sep+1", "sep-1", "sep0", "gap+1", "gap-1", "ordered_fwd", "ordered_rev"} <= set(terms)
    assert all(not t.requires_grad for t in terms.values())
    total.backward()
    assert all(v.grad is not None for v in (*s.values(), *logp.values()))


def test_combine_layers_and_scale():
    cfg = LossConfig(kind="raw", scale_to_ref=True, w_mono=0.0, coh_rows="both")
    s, s0, logp, logp_ref, mask = _toy_inputs(requires_grad=False)
    s_layers = {c: {"a": v, "b": 2 * v} for c, v in s.items()}
    total, terms = combine(cfg, s_layers, {"a": s0, "b": 2 * s0}, logp, logp_ref, mask, scale={"a": 4.0, "b": 8.0})
    expected = sum(projection_loss(v, s0, c=c, kind="raw", scale_to_ref=4.0) * 2 for c, v in s.items())
    expected = expected + sum(coherence_barrier(logp[c], logp_ref, mask, cfg.tau, cfg.w_coh) for c in s)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert "mono" not in terms and "sep+1/a" in terms and "sep0/b" in terms
    with pytest.raises(ValueError):
        LossConfig(kind="nope")


def test_coherence_only_on_the_row_playing_pos():
    """coh_rows='pos': at c = +1 only the pos rows (even) count, at c = -1 only the neg rows (odd)."""
    cfg = LossConfig(w_mono=0.0, w_proj=0.0, w_coh=2.0, tau=0.1, coh_rows="pos")
    s, s0, logp, logp_ref, mask = _toy_inputs(requires_grad=False)
    _, terms = combine(cfg, s, s0, logp, logp_ref, mask)
    for c, rows in ((1.0, slice(0, None, 2)), (-1.0, slice(1, None, 2))):
        v = (logp_ref[rows] - logp[c][rows] - 0.1).clamp(min=0)
        m = mask[rows]
        expected = 2.0 * float((torch.log1p(v) * m).sum() / m.sum())
        assert terms[f"coh{c:+g}"].item() == pytest.approx(expected, rel=1e-6)
    # changing the rows that do not play pos leaves the term unchanged
    logp2 = {1.0: logp[1.0].clone(), -1.0: logp[-1.0].clone()}
    logp2[1.0][1::2] -= 5.0
    logp2[-1.0][0::2] -= 5.0
    _, terms2 = combine(cfg, s, s0, logp2, logp_ref, mask)
    assert terms2["coh+1"].item() == pytest.approx(terms["coh+1"].item())
    assert terms2["coh-1"].item() == pytest.approx(terms["coh-1"].item())
    with pytest.raises(ValueError, match="coh_rows"):
        LossConfig(coh_rows="neg")


def test_forward_hinge_is_zero_iff_ordered_with_margin():
    """The fixed-order hinge (the default) is 0 exactly when g(-1) < -margin and g(+1) > margin."""
    torch.manual_seed(0)
    g_neg, g_pos = torch.randn(400) * 0.2, torch.randn(400) * 0.2
    m = 0.05
    per_pair = torch.stack([monotonic_hinge(g_neg[i:i + 1], g_pos[i:i + 1], m, 1.0, "forward") for i in range(400)])
    ordered = (g_neg <= -m) & (g_pos >= m)
    assert ((per_pair == 0) == ordered).all()
    assert ordered.any() and (~ordered).any()
    # the mirror ordering is penalised under `forward` (it is not under v0's `batch`)
    assert monotonic_hinge(torch.tensor([0.5]), torch.tensor([-0.5]), m, 1.0, "forward") > 0
    assert monotonic_hinge(torch.tensor([0.5]), torch.tensor([-0.5]), m, 1.0, "batch") == 0
    assert LossConfig().mono_ordering == "forward"


# ------------------------------------------------------------------------------------ pinned details
# Found by mutation testing (`make mutate`, docs/RESULTS.md): defaults, boundaries, dtypes and messages that no
# test above could tell apart from a wrong one.


def test_defaults_are_the_method_values():
    """Called with its defaults, each term is the METHOD value computed by hand: logsigmoid, beta 0.1, margin
    1, c = +1, unscaled, mean; barrier tau 0.5 nats, weight 40; hinge margin 0.05, weight 1, batch ordering."""
    s_c, s_0 = torch.tensor([3.0, -2.0, 0.5]), torch.tensor([1.0, 0.5, -0.25])
    by_hand = sum(math.log1p(math.exp(-0.1 * (a - b - 1.0))) for a, b in zip(s_c.tolist(), s_0.tolist(), strict=True)) / 3
    assert projection_loss(s_c, s_0).item() == pytest.approx(by_hand, rel=1e-6)
    logp_ref, mask = torch.zeros(1, 3), torch.ones(1, 3)
    logp_c = torch.tensor([[-2.0, -0.7, -0.2]])  # drops 2, 0.7, 0.2: past tau by 1.5, 0.2, 0
    want = 40.0 * (math.log1p(1.5) + math.log1p(0.2)) / 3
    assert coherence_barrier(logp_c, logp_ref, mask).item() == pytest.approx(want, rel=1e-6)
    g_neg, g_pos = torch.tensor([0.3, 0.02]), torch.tensor([-0.3, 0.5])
    fwd, rev = ordering_violations(g_neg, g_pos)
    assert fwd.tolist() == pytest.approx([0.35 + 0.35, 0.07 + 0.0])
    assert rev.tolist() == pytest.approx([0.0 + 0.0, 0.55 + 0.03])
    # batch: forward mean 0.385 > reverse mean 0.29, so the reverse violations, weight 1
    assert monotonic_hinge(g_neg, g_pos).item() == pytest.approx(0.29)


def test_loss_dtypes_follow_the_input():
    """The projection loss is in s_c's dtype whatever the reference's and the coefficient's; masks of another
    dtype do not promote the masked mean or the barrier."""
    s_c, s_0 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25], dtype=torch.float64)
    c = torch.tensor([1.0, -1.0], dtype=torch.float64)
    for kind in ("logsigmoid", "raw"):
        assert projection_loss(s_c, s_0, c=c, kind=kind).dtype == torch.float32
        assert projection_loss(s_c, s_0, c=c, kind=kind, reduction="none").dtype == torch.float32
    x, mask64 = torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)
    assert masked_row_mean(x, mask64).dtype == torch.float32 and masked_row_mean(x, mask64).item() == 3.0
    assert coherence_barrier(-x, torch.zeros(1, 3), mask64, 0.5, 1.0).dtype == torch.float32


def test_scale_is_applied_in_the_inputs_precision():
    """A number given as `scale_to_ref` divides in float64 for float64 separations (no float32 rounding)."""
    s_c = torch.tensor([0.3, 0.7], dtype=torch.float64)
    s_0 = torch.tensor([0.1, -0.2], dtype=torch.float64)
    got = projection_loss(s_c, s_0, kind="raw", scale_to_ref=0.1, reduction="none")
    want = [-(math.log1p(a / 0.1) - math.log1p(abs(b) / 0.1)) for a, b in zip(s_c.tolist(), s_0.tolist(), strict=True)]
    assert got.tolist() == pytest.approx(want, rel=1e-13, abs=0)


def test_ref_scale_is_the_mean_size_ignoring_nan_with_a_floor():
    assert ref_scale(torch.tensor([0.01, -0.03, float("nan")])).item() == pytest.approx(0.02)
    assert ref_scale(torch.zeros(3)).item() == pytest.approx(1e-6)
    s = torch.tensor([2.0, -4.0], requires_grad=True)
    assert not ref_scale(s).requires_grad


def test_masked_mean_of_single_and_empty_rows():
    x = torch.tensor([[5.0, 7.0], [3.0, 9.0], [1.0, 2.0]])
    mask = torch.tensor([[0, 1], [0, 0], [1, 1]])
    assert masked_row_mean(x, mask).tolist() == [7.0, 0.0, 1.5]  # one token; none (0, not NaN); two
    assert coherence_barrier(torch.tensor([[-3.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[1, 0]]), 0.5,
                             2.0).item() == pytest.approx(2.0 * math.log1p(2.5))  # one masked token
    assert coherence_barrier(-torch.ones(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 2.0).item() == 0.0


def test_ordered_fraction_boundaries():
    """Strict inequalities around 0: a gap of exactly 0 is not ordered, and 0.5 is not negative."""
    g_neg = torch.tensor([0.0, -1.0, 0.5, -1.0, -0.5])
    g_pos = torch.tensor([1.0, 0.0, 1.0, 0.5, 2.0])
    fwd, rev = ordered_fraction(g_neg, g_pos)
    assert fwd.item() == pytest.approx(2 / 5)  # pairs 4 and 5
    fwd, rev = ordered_fraction(g_pos, g_neg)  # the mirror: now the reverse ordering
    assert rev.item() == pytest.approx(2 / 5) and fwd.item() == 0.0


def test_batch_ordering_takes_forward_at_a_tie():
    """Equal mean violations: the forward ordering is taken (the gradient shows which one)."""
    g_neg = torch.tensor([-0.3, 0.3], requires_grad=True)
    g_pos = torch.tensor([0.3, -0.3], requires_grad=True)
    loss = monotonic_hinge(g_neg, g_pos, 0.05, 1.0, "batch")
    fwd, rev = ordering_violations(g_neg.detach(), g_pos.detach(), 0.05)
    assert fwd.mean() == rev.mean() and loss.item() == pytest.approx(fwd.mean().item())
    loss.backward()
    assert g_neg.grad.tolist() == [0.0, 0.5] and g_pos.grad.tolist() == [0.0, -0.5]  # pair 2 violates forward


def test_playing_pos_rows_values_and_dtype():
    mask = torch.tensor([[True, False], [True, True], [False, True], [True, True]])
    plus, minus = playing_pos_rows(mask, 1.0), playing_pos_rows(mask, -1.0)
    assert plus.dtype == minus.dtype == torch.bool
    assert plus.tolist() == [[True, False], [False, False], [False, True], [False, False]]
    assert minus.tolist() == [[False, False], [True, True], [False, False], [True, True]]
    ints = playing_pos_rows(torch.ones(4, 3, dtype=torch.long), -0.5)
    assert ints.dtype == torch.long and ints.tolist() == [[0] * 3, [1] * 3, [0] * 3, [1] * 3]


def test_error_messages_name_the_value_and_the_choices():
    cases = [
        (lambda: LossConfig(kind="hinge"), "unknown projection loss 'hinge'; use one of ('logsigmoid', 'raw')"),
        (lambda: LossConfig(mono_ordering="both"),
         "unknown mono_ordering 'both'; use one of ('batch', 'sample', 'forward', 'reverse')"),
        (lambda: LossConfig(coh_rows="neg"), "unknown coh_rows 'neg'; use one of ('pos', 'both')"),
        (lambda: projection_loss(torch.ones(1), torch.ones(1), kind="x"),
         "unknown projection loss 'x'; use one of ('logsigmoid', 'raw')"),
        (lambda: projection_loss(torch.ones(2), torch.ones(2), c=torch.tensor([1.0, 0.0])),
         "the projection loss is defined for c != 0 (c = 0 is the frozen reference)"),
        (lambda: monotonic_hinge(torch.ones(1), torch.ones(1), ordering="up"),
         "unknown ordering 'up'; use one of ('batch', 'sample', 'forward', 'reverse')"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError) as e:
            make()
        assert str(e.value) == message


def _hand_total(cfg: LossConfig, s, s0, logp, logp_ref, mask, scale):
    """The total loss assembled term by term from the building blocks, for `combine` to equal."""
    k = scale if cfg.scale_to_ref and scale is not None else cfg.scale_to_ref
    terms = {}
    for c, sc in s.items():
        terms[f"proj{c:+g}"] = projection_loss(sc, s0, c=c, kind=cfg.kind, beta=cfg.beta, margin=cfg.margin,
                                               scale_to_ref=k)
    for c, lp in logp.items():
        m = playing_pos_rows(mask, c) if cfg.coh_rows == "pos" else mask
        terms[f"coh{c:+g}"] = coherence_barrier(lp, logp_ref, m, cfg.tau, cfg.w_coh)
    total = cfg.w_proj * sum(v for n, v in terms.items() if n.startswith("proj")) + sum(
        v for n, v in terms.items() if n.startswith("coh"))
    if -1.0 in logp and 1.0 in logp and cfg.w_mono > 0:
        gap0 = preference_gap(logp_ref, mask)
        terms["mono"] = monotonic_hinge(preference_gap(logp[-1.0], mask) - gap0,
                                        preference_gap(logp[1.0], mask) - gap0,
                                        cfg.mono_margin, cfg.w_mono, cfg.mono_ordering)
        total = total + terms["mono"]
    return total, terms


@pytest.mark.parametrize("scale_to_ref", [False, True])
@pytest.mark.parametrize("kind", ["logsigmoid", "raw"])
def test_combine_passes_every_setting_through(kind, scale_to_ref):
    """Every field of a non-default LossConfig reaches its term: combine equals the hand assembly, term by
    term; a scale given without scale_to_ref is ignored; each diagnostic is the value it names."""
    cfg = LossConfig(kind=kind, beta=0.7, margin=0.3, scale_to_ref=scale_to_ref, w_proj=0.6, tau=0.2, w_coh=3.0,
                     mono_margin=0.1, w_mono=0.5, mono_ordering="reverse", coh_rows="pos")
    s, s0, logp, logp_ref, mask = _toy_inputs(requires_grad=False)
    s = {c: v.abs() * c + 0.1 for c, v in s.items()}  # raw needs sign(c) s_c > 0
    total, terms = combine(cfg, s, s0, logp, logp_ref, mask, scale=2.5)
    want_total, want = _hand_total(cfg, s, s0, logp, logp_ref, mask, 2.5)
    assert total.item() == pytest.approx(want_total.item(), rel=1e-6)
    for name, v in want.items():
        assert terms[name].item() == pytest.approx(v.item(), rel=1e-6), name
    assert terms["total"].item() == pytest.approx(total.item())
    assert terms["sep+1"].item() == pytest.approx(s[1.0].mean().item())
    assert terms["sep-1"].item() == pytest.approx(s[-1.0].mean().item())
    assert terms["sep0"].item() == pytest.approx(s0.mean().item())
    gap0 = preference_gap(logp_ref, mask)
    g = {c: preference_gap(logp[c], mask) - gap0 for c in (1.0, -1.0)}
    assert terms["gap+1"].item() == pytest.approx(g[1.0].mean().item())
    assert terms["gap-1"].item() == pytest.approx(g[-1.0].mean().item())
    fwd, rev = ordered_fraction(g[-1.0], g[1.0])
    assert (terms["ordered_fwd"].item(), terms["ordered_rev"].item()) == (fwd.item(), rev.item())
    assert set(terms) == {"proj+1", "proj-1", "coh+1", "coh-1", "mono", "total", "sep+1", "sep-1", "sep0", "gap+1",
                          "gap-1", "ordered_fwd", "ordered_rev"}


def test_combine_with_one_coefficient_has_no_ordering_terms():
    cfg = LossConfig(w_mono=5.0, coh_rows="both")
    s, s0, logp, logp_ref, mask = _toy_inputs(requires_grad=False)
    total, terms = combine(cfg, {1.0: s[1.0]}, s0, {1.0: logp[1.0]}, logp_ref, mask)
    want = projection_loss(s[1.0], s0, c=1.0, kind=cfg.kind, beta=cfg.beta, margin=cfg.margin) + coherence_barrier(
        logp[1.0], logp_ref, mask, cfg.tau, cfg.w_coh)
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert set(terms) == {"proj+1", "coh+1", "sep+1", "sep0", "total"}


def test_hinge_margin_by_hand_and_the_configured_ordering_reaches_it():
    """A margin other than the default changes the violations as written; combine's hinge uses the configured
    ordering even where the batch rule would pick the other one (values by hand, not via monotonic_hinge)."""
    g_neg, g_pos = torch.tensor([-0.1, 0.3]), torch.tensor([0.25, -0.05])
    fwd, rev = ordering_violations(g_neg, g_pos, 0.2)
    assert fwd.tolist() == pytest.approx([0.1 + 0.0, 0.5 + 0.25])
    assert rev.tolist() == pytest.approx([0.45 + 0.3, 0.15 + 0.0])
    assert monotonic_hinge(g_neg, g_pos, 0.2, 2.0, "forward").item() == pytest.approx(2.0 * 0.425)
    assert monotonic_hinge(g_neg, g_pos, 0.2, 2.0, "reverse").item() == pytest.approx(2.0 * 0.45)
    # combine: rows whose shared-tail gaps are g_neg at -1 and g_pos at +1 (reference gap 0)
    logp_ref = torch.zeros(4, 1)
    logp = {1.0: torch.tensor([[0.25], [0.0], [-0.05], [0.0]]), -1.0: torch.tensor([[-0.1], [0.0], [0.3], [0.0]])}
    s = {c: torch.ones(2) * c for c in (1.0, -1.0)}
    for ordering, want in (("reverse", 0.45), ("forward", 0.425)):  # batch would take forward (0.425 < 0.45)
        cfg = LossConfig(w_mono=2.0, mono_margin=0.2, mono_ordering=ordering, w_coh=0.0, w_proj=0.0)
        _, terms = combine(cfg, s, torch.zeros(2), logp, logp_ref, torch.ones(4, 1))
        assert terms["mono"].item() == pytest.approx(2.0 * want), ordering
