"""Every metric of METHOD section 7 on small hand-made tables, answers computed by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from innerpissa.eval import metrics as M
from innerpissa.eval.harness import add_choice_columns
from innerpissa.eval.summary import axis_deltas, coeff_table, method_table, seed_table

T = "Virtue/Truthfulness"


def test_scores_by_hand():
    d = np.array([2.0, 0.0, 1.0, -1.0])
    label = np.array([1, 0, 2, 0])
    # b = mean(0, -1) = -0.5; corrected = mean(1*(2+0.5)/2, 2*(1+0.5)/2) = mean(1.25, 1.5)
    assert M.bias_term(d, label) == pytest.approx(-0.5)
    assert M.corrected_score(d, label) == pytest.approx(1.375)
    r = np.array([1.0, 5.0, 0.5, 7.0])
    assert M.raw_score(r, label) == pytest.approx(1.0)  # mean(1*1, 2*0.5); label-0 rows ignored
    assert math.isnan(M.corrected_score(d, np.zeros(4)))  # nothing labelled


def test_paired_delta_deterministic_shift_has_zero_width_ci():
    v0 = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    label = np.array([1, -1, 2, 0, 0])
    # the steered condition moves d by +label on labelled dilemmas (toward the axis), neutral ones unchanged:
    # corrected Δ = mean(label * label / 2) = mean(0.5, 0.5, 2) = 1.0 for every resample too? No: the
    # resample mean of label²/2 varies; use labels of equal magnitude for a constant answer.
    label = np.array([1, -1, 1, 0, 0])
    vc = v0 + label
    delta = M.paired_delta(vc, v0, label, corrected=True, n_boot=200)
    assert delta.delta == pytest.approx(0.5)  # label*label/2 = 0.5 on each labelled dilemma
    assert delta.lo == pytest.approx(0.5) and delta.hi == pytest.approx(0.5)
    assert (delta.n_labelled, delta.n_neutral) == (3, 2)


def test_uniform_shift_of_d_cancels_in_corrected_score():
    rng = np.random.default_rng(0)
    v0 = rng.normal(size=40)
    label = rng.integers(-1, 3, size=40)
    delta = M.paired_delta(v0 + 0.8, v0, label, corrected=True, n_boot=100)
    assert delta.delta == pytest.approx(0.0, abs=1e-12)
    assert abs(delta.lo) < 1e-12 and abs(delta.hi) < 1e-12


def test_paired_delta_drops_nan_dilemmas_and_ci_contains_estimate():
    rng = np.random.default_rng(1)
    v0 = rng.normal(size=60)
    label = rng.integers(-1, 2, size=60)
    vc = v0 + 0.3 * label + rng.normal(scale=0.5, size=60)
    vc[3] = np.nan
    d = M.paired_delta(vc, v0, label, n_boot=300)
    assert d.n_labelled + d.n_neutral == 59
    assert d.lo <= d.delta <= d.hi


def test_spearman_over_means():
    from innerpissa.eval.stats import spearman

    c = [-1, -0.5, 0, 0.5, 1]
    assert spearman(c, [-2, -1, 0, 0.5, 3], min_points=3) == pytest.approx(1.0)
    assert spearman(c, [3, 0.5, 0, -1, -2], min_points=3) == pytest.approx(-1.0)
    # ranks of [0,1,0,1,0] are [2,4.5,2,4.5,2]; centred: [-1,1.5,-1,1.5,-1] against [-2,-1,0,1,2] -> cov 0
    assert spearman(c, [0, 1, 0, 1, 0], min_points=3) == pytest.approx(0.0)
    assert math.isnan(spearman(c, [1, 1, 1, 1, 1], min_points=3))
    assert math.isnan(spearman(c, [1, np.nan, np.nan, np.nan, 2], min_points=3))  # two finite means


def test_slope_stats_by_hand():
    # points (-1,-1) (-1,-3) (1,1) (1,3), and (2, 100) outside c in [-1, 1]
    c = np.array([-1, -1, 1, 1, 2.0])
    y = np.array([-1, -3, 1, 3, 100.0])
    s = M.slope_stats(c, y)
    # Sxy = 8, Sxx = 4 -> slope 2; residuals ±1 -> SSE 4, s² = 4/2 = 2, se = sqrt(2/4); t = 2/sqrt(.5)
    assert s.slope == pytest.approx(2.0)
    assert s.stderr == pytest.approx(math.sqrt(0.5))
    assert s.t == pytest.approx(2 * math.sqrt(2))
    # Student t with 2 df: two-sided p = 1 - t / sqrt(2 + t²)
    assert s.p == pytest.approx(1 - s.t / math.sqrt(2 + s.t**2))
    assert s.n == 4


def test_gains():
    assert M.gain_effect(0.5, 0.8, 0.25) == pytest.approx(32.0)  # 100*0.5*0.8/1.25
    assert M.gain_effect(0.5, -0.3, 0.0) == 0.0  # reversed steering scores nothing
    assert M.gain_t(-3.0, -0.2) == pytest.approx(300.0)  # improvement in NLL is not rewarded
    assert M.gain_t(3.0, 0.5) == pytest.approx(200.0)


def test_matched_effect():
    c = [-2, -1, 0, 1, 2]
    delta = [-0.9, -0.3, 0.0, 0.4, 1.2]
    dnll = [0.8, 0.2, 0.0, 0.3, 0.6]
    ok = [1, 1, 1, 1, 1]
    e = M.matched_effect(c, delta, dnll, ok)  # coherent: c in {-1, 0, 1}: up 0.4, down 0.3
    assert (e.effect, e.up, e.down, e.c_up, e.c_down) == pytest.approx((0.3, 0.4, 0.3, 1, -1))
    e = M.matched_effect(c, delta, dnll, ok, max_dnll=1.0)  # everything coherent: min(1.2, 0.9)
    assert (e.effect, e.c_up, e.c_down) == pytest.approx((0.9, 2, -2))
    e = M.matched_effect(c, delta, dnll, [1, 0.85, 1, 1, 1])  # c=-1 has too few valid rows: no down shift
    assert (e.effect, e.down, e.c_down) == (0.0, 0.0, 0.0)
    e = M.matched_effect(c, [0.2, 0.1, 0, 0.4, 1.2], dnll, ok)  # negative c moves the wrong way
    assert e.effect == 0.0


def test_two_sided_interval_deterministic():
    v0 = np.array([0.0, 1.0, 2.0, 5.0])
    label = np.array([1, 1, 0, 0])
    eff, lo, hi = M.two_sided_interval(v0 + 2 * label, v0 - 0.5 * label, v0, label, n_boot=50)
    # corrected Δ(up) = 2*1/2 = 1, Δ(down) = -0.5/2 = -0.25 -> min(1, 0.25)
    assert (eff, lo, hi) == pytest.approx((0.25, 0.25, 0.25))


def test_seed_aggregation():
    tab = pd.DataFrame({"method": ["x"] * 3 + ["y"], "seed": [0, 1, 2, 0], "effect": [1.0, 2.0, 3.0, 7.0]})
    agg = M.aggregate_seeds(tab).set_index("method")
    assert agg.loc["x", "effect_mean"] == pytest.approx(2.0)
    assert agg.loc["x", "effect_std"] == pytest.approx(1.0)
    assert agg.loc["x", "n_seeds"] == 3 and math.isnan(agg.loc["y", "effect_std"])


def test_validity_rule():
    scores = pd.DataFrame({"logp_yes": np.log([0.3, 0.6]), "logp_no": np.log([0.1, 0.2])})
    out = add_choice_columns(scores, pd.Series(["to_do", "not_to_do"]), min_mass=0.5)
    assert out["mass"].tolist() == pytest.approx([0.4, 0.8])
    assert out["valid"].tolist() == [False, True]
    assert math.isnan(out["logodds"][0]) and out["logodds"][1] == pytest.approx(math.log(3))
    assert out["logodds_todo"][1] == pytest.approx(-math.log(3))  # not_to_do row: negated
    out = add_choice_columns(scores, pd.Series(["to_do", "to_do"]), min_mass=0.3)
    assert out["valid"].all() and out["logodds"][0] == pytest.approx(math.log(3))


# ---------------------------------------------------------------------------- per-row tables end to end


def results(yes: dict[float, dict[int, tuple[float, float]]], labels: dict[int, int], method: str = "m",
            seed: int = 0) -> pd.DataFrame:
    """A harness-shaped frame from {coeff: {dilemma: (Yes log-odds of to_do row, of not_to_do row)}}."""
    rows = []
    for c, by_dilemma in yes.items():
        for dil, pair in by_dilemma.items():
            for action, lo in zip(("to_do", "not_to_do"), pair, strict=True):
                sign = 1 if action == "to_do" else -1
                rows.append({"method": method, "seed": seed, "coeff": c, "dilemma_idx": dil, "action_type": action,
                             "logodds": lo, "logodds_todo": sign * lo, "valid": True, "mass": 0.9,
                             "nll": 2.0 + abs(c) * 0.1, "label:" + T: labels[dil], "label:MFT/Care": 0})
    return pd.DataFrame(rows)


LABELS = {1: 1, 2: 2, 3: 0, 4: 0}
BASE = {1: (1.0, -1.0), 2: (0.5, 0.0), 3: (0.2, -0.4), 4: (1.0, 0.6)}


def test_pure_todo_bias_moves_raw_not_corrected():
    # c = 1 adds 0.8 to the Yes log-odds of every to_do row: a habit, not a value
    shifted = {k: (a + 0.8, b) for k, (a, b) in BASE.items()}
    res = results({0.0: BASE, 1.0: shifted}, LABELS)
    tab = coeff_table(res, T, n_boot=100).set_index("coeff")
    # raw per dilemma r = (yes_todo - yes_not)/2 moves by 0.4 -> Δraw = mean(1*0.4, 2*0.4) = 0.6
    assert tab.loc[1.0, "raw_delta"] == pytest.approx(0.6)
    assert tab.loc[1.0, "corr_delta"] == pytest.approx(0.0, abs=1e-12)
    # at c = 0: d = [2, .5, .6, .4], b = .5, corrected = mean(1*(2-.5)/2, 2*(.5-.5)/2) = 0.375
    assert tab.loc[0.0, "bias"] == pytest.approx(0.5)
    assert tab.loc[0.0, "corr"] == pytest.approx(0.375)
    assert tab.loc[0.0, "raw"] == pytest.approx(0.75)  # mean(1*1.0, 2*0.25)
    assert tab.loc[1.0, "dnll"] == pytest.approx(0.1)
    assert tab.loc[1.0, "valid_frac"] == 1.0 and tab.loc[0.0, "yes_rate"] == pytest.approx(5 / 8)


def test_sweep_metrics_end_to_end():
    # c moves d by c*label on labelled dilemmas (and the habit by 0.3c, which must not count)
    sweep = {c: {k: (a + c * LABELS[k] / 2 + 0.3 * c, b - c * LABELS[k] / 2) for k, (a, b) in BASE.items()}
             for c in (-1.0, -0.5, 0.0, 0.5, 1.0)}
    res = results(sweep, LABELS)
    tab = coeff_table(res, T, side_axes=[T, "MFT/Care"], n_boot=100)
    # Δd = c*label -> Δcorrected = mean(label * c * label / 2) = c * mean(1/2, 4/2) = 1.25c
    assert tab["corr_delta"].tolist() == pytest.approx([-1.25, -0.625, 0, 0.625, 1.25])
    assert tab["side_effects"].fillna(0).abs().max() == 0.0  # MFT/Care has no labelled dilemma: NaN or 0
    meth = method_table(res, tab, T, n_boot=100).iloc[0]
    # ΔNLL = 0.1|c| <= 0.5 everywhere: effect = min(1.25, 1.25)
    assert (meth["effect"], meth["c_up"], meth["c_down"]) == pytest.approx((1.25, 1.0, -1.0))
    assert meth["effect_lo"] <= 1.25 <= meth["effect_hi"]
    assert meth["rho"] == pytest.approx(1.0)
    assert meth["slope"] == pytest.approx(1.25)  # per-dilemma scores label*(d-b)/2: slopes .5 and 2, mean 1.25
    assert meth["gain_rho"] == pytest.approx(100 * 1.25 * 1.0 / 1.1)
    agg = seed_table(pd.concat([method_table(res, tab, T, n_boot=50)] * 2).assign(seed=[0, 1]))
    assert agg.loc[0, "n_seeds"] == 2 and agg.loc[0, "effect_std"] == pytest.approx(0.0)


def test_axis_deltas_pairs_on_valid_dilemmas():
    res = results({0.0: BASE, 1.0: {k: (a + LABELS[k], b) for k, (a, b) in BASE.items()}}, LABELS)
    res.loc[(res["coeff"] == 1.0) & (res["dilemma_idx"] == 2) & (res["action_type"] == "to_do"), "logodds"] = np.nan
    out = axis_deltas(res, [T])
    # dilemma 2 is dropped at both coefficients: only dilemma 1 (label 1, Δd = 1) -> Δ = 0.5
    assert out.loc[("m", 0, 1.0), T] == pytest.approx(0.5)
