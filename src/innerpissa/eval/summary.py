"""From the harness's per-row results to per-coefficient and per-method tables (METHOD section 7).

`coeff_table`: one line per (method, seed, coeff): validity, choice mass, Yes rate, prompt NLL and ΔNLL,
the target axis's raw and bias-corrected score and their paired Δ vs c = 0 with bootstrap CIs, and side
effects. `method_table`: one line per (method, seed): effect at matched coherence (with CI), Spearman ρ,
slope/t/p, the two gains. `seed_table`: mean and spread of `method_table` over seeds.
The maths lives in `metrics.py`; this module only arranges the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from innerpissa.data.dilemmas import DEFAULT_TARGET, LABEL_PREFIX
from innerpissa.eval import metrics as M
from innerpissa.eval.stats import spearman

GROUP = ["method", "seed"]


def per_dilemma(res: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Per (method, seed, coeff, dilemma): `d` = Yes log-odds of the to_do minus the not_to_do row (NaN unless
    both rows are valid), `r` = mean `logodds_todo` over the valid rows, and the `label:<axis>` columns."""
    cols = [LABEL_PREFIX + a for a in axes]
    missing = [c for c in cols if c not in res.columns]
    if missing:
        raise KeyError(f"no labels {missing} in the results (evaluate with those axes)")
    keys = [*GROUP, "coeff", "dilemma_idx"]
    # unstack (not pivot_table): no cartesian product of methods and coefficients, and duplicates raise
    wide = res.set_index([*keys, "action_type"])["logodds"].unstack("action_type")
    wide = wide.reindex(columns=["to_do", "not_to_do"])
    out = pd.DataFrame({"d": wide["to_do"] - wide["not_to_do"],
                        "r": pd.concat([wide["to_do"], -wide["not_to_do"]], axis=1).mean(axis=1, skipna=True)})
    out = out.join(res.groupby(keys)[cols].first())
    return out.reset_index()


def _aligned(dil: pd.DataFrame, column: str, axis: str) -> tuple[pd.DataFrame, np.ndarray]:
    """`column` as a [coeff x dilemma] table for one (method, seed), and the axis labels in dilemma order."""
    table = dil.pivot(index="coeff", columns="dilemma_idx", values=column)
    labels = dil.groupby("dilemma_idx")[LABEL_PREFIX + axis].first().reindex(table.columns).to_numpy(float)
    return table, labels


def axis_deltas(res: pd.DataFrame, axes: Sequence[str], corrected: bool = True) -> pd.DataFrame:
    """Point Δ score vs c = 0 per axis (paired: dilemmas usable at both c and 0), index (method, seed, coeff)."""
    score = M.corrected_score if corrected else M.raw_score
    column = "d" if corrected else "r"
    dil = per_dilemma(res, axes)
    vals: dict[tuple, dict[str, float]] = {}
    for key, g in dil.groupby(GROUP, sort=False):
        for axis in axes:
            table, labels = _aligned(g, column, axis)
            if 0.0 not in table.index:
                continue
            v0 = table.loc[0.0].to_numpy()
            for c in table.index:
                v = table.loc[c].to_numpy()
                both = np.isfinite(v) & np.isfinite(v0)
                vals.setdefault((*key, c), {})[axis] = (score(np.where(both, v, np.nan), labels)
                                                        - score(np.where(both, v0, np.nan), labels))
    out = pd.DataFrame.from_dict(vals, orient="index", columns=list(axes))
    out.index = pd.MultiIndex.from_tuples(out.index, names=[*GROUP, "coeff"])
    return out


def _condition_stats(res: pd.DataFrame) -> pd.DataFrame:
    """Validity, choice mass, Yes rate and prompt NLL per (method, seed, coeff), and ΔNLL vs c = 0."""
    g = res.groupby([*GROUP, "coeff"])
    out = pd.DataFrame({
        "n_rows": g.size(), "valid_frac": g["valid"].mean(), "mass": g["mass"].mean(),
        "yes_rate": g["logodds"].apply(lambda s: float((s.dropna() > 0).mean()) if s.notna().any() else math.nan),
        "nll": g["nll"].mean(),
    }).reset_index()
    base = out[out["coeff"] == 0.0].set_index(GROUP)["nll"]
    out["dnll"] = out["nll"] - out.set_index(GROUP).index.map(base).to_numpy(dtype=float)
    return out


def coeff_table(res: pd.DataFrame, target: str = DEFAULT_TARGET, side_axes: Sequence[str] = (),
                n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One line per (method, seed, coeff): condition stats, target scores, their paired Δ and CIs,
    and side effects (mean |Δ corrected| over `side_axes` other than the target)."""
    stats_ = _condition_stats(res).set_index([*GROUP, "coeff"])
    dil = per_dilemma(res, [target])
    lines = []
    for key, g in dil.groupby(GROUP, sort=False):
        for kind, column, corrected in (("corr", "d", True), ("raw", "r", False)):
            table, labels = _aligned(g, column, target)
            has_zero = 0.0 in table.index
            for c in table.index:
                v = table.loc[c].to_numpy()
                score = (M.corrected_score if corrected else M.raw_score)(v, labels)
                delta = (M.paired_delta(v, table.loc[0.0].to_numpy(), labels, corrected, n_boot, ci, seed)
                         if has_zero else M.Delta(math.nan, math.nan, math.nan, 0, 0))
                line = {"method": key[0], "seed": key[1], "coeff": c, kind: score, f"{kind}_delta": delta.delta,
                        f"{kind}_lo": delta.lo, f"{kind}_hi": delta.hi}
                if corrected:
                    line |= {"bias": M.bias_term(v, labels), "n_labelled": delta.n_labelled, "n_neutral": delta.n_neutral}
                lines.append(line)
    scores = pd.DataFrame(lines).groupby([*GROUP, "coeff"]).first()
    out = stats_.join(scores)
    others = [a for a in side_axes if a != target]
    if others:
        out["side_effects"] = axis_deltas(res, others).abs().mean(axis=1)
    return out.reset_index().sort_values([*GROUP, "coeff"]).reset_index(drop=True)


def method_table(res: pd.DataFrame, coeffs: pd.DataFrame, target: str = DEFAULT_TARGET,
                 max_dnll: float = M.DEFAULT_MAX_DNLL, min_valid: float = M.DEFAULT_MIN_VALID,
                 c_range: tuple[float, float] = (-1.0, 1.0), n_boot: int = 1000, ci: float = 0.95,
                 seed: int = 0) -> pd.DataFrame:
    """One line per (method, seed): the headline and the journal's metrics, from `coeff_table`'s output.

    - effect (+ CI): largest two-sided corrected shift with ΔNLL ≤ max_dnll and ≥ min_valid rows valid;
    - rho: Spearman ρ of the mean corrected score over the coefficients in `c_range`;
    - slope/t/p: regression over `c_range` of per-dilemma corrected scores (and per-row raw logscores);
    - gain_rho = 100·Δ(c+)·max(0,ρ)/(1+ΔNLL), gain_t = 100·|t|/(1+max(0,ΔNLL)), with c± the extreme
      coefficients inside `c_range` (normally ±1) and ΔNLL the worse of the two (`dnll_pm1`).
    """
    dil = per_dilemma(res, [target]).rename(columns={LABEL_PREFIX + target: "label"})
    lines = []
    for (method, sd), tab in coeffs.groupby(GROUP, sort=False):
        tab = tab.sort_values("coeff")
        me = M.matched_effect(tab["coeff"], tab["corr_delta"], tab["dnll"], tab["valid_frac"], max_dnll, min_valid)
        g = dil[(dil["method"] == method) & (dil["seed"] == sd)]
        table = g.pivot(index="coeff", columns="dilemma_idx", values="d")
        labels = g.groupby("dilemma_idx")["label"].first().reindex(table.columns).to_numpy(float)
        eff, lo, hi = (M.two_sided_interval(table.loc[me.c_up], table.loc[me.c_down], table.loc[0.0], labels,
                                            True, n_boot, ci, seed) if 0.0 in table.index else (math.nan,) * 3)
        in_range = tab[(tab["coeff"] >= c_range[0]) & (tab["coeff"] <= c_range[1])]
        rho = spearman(in_range["coeff"], in_range["corr"], min_points=3)
        # per-dilemma corrected score at each c: label * (d - b(c)) / 2 over labelled dilemmas
        b = tab.set_index("coeff")["bias"]
        lab = g[g["label"] != 0]
        corr_y = lab["label"] * (lab["d"] - lab["coeff"].map(b)) / 2
        slope = M.slope_stats(lab["coeff"].to_numpy(), corr_y.to_numpy(), c_range)
        rows = res[(res["method"] == method) & (res["seed"] == sd) & (res[LABEL_PREFIX + target] != 0)]
        raw_slope = M.slope_stats(rows["coeff"].to_numpy(), (rows["logodds_todo"] * rows[LABEL_PREFIX + target]).to_numpy(), c_range)
        at = tab.set_index("coeff")
        c_plus, c_minus = in_range["coeff"].max(), in_range["coeff"].min()  # normally +1 and -1
        d_plus = at["corr_delta"].get(c_plus, math.nan) if c_plus > 0 else math.nan
        dnll_pm = max(at["dnll"].get(c_plus, math.nan), at["dnll"].get(c_minus, math.nan))
        lines.append({
            "method": method, "seed": sd, "effect": me.effect, "effect_lo": lo,
            "effect_hi": hi, "up": me.up, "down": me.down, "c_up": me.c_up, "c_down": me.c_down, "rho": rho,
            "slope": slope.slope, "t": slope.t, "p": slope.p, "raw_slope": raw_slope.slope, "raw_t": raw_slope.t,
            "raw_p": raw_slope.p, "gain_rho": M.gain_effect(d_plus, rho, dnll_pm), "gain_t": M.gain_t(slope.t, dnll_pm),
            "dnll_pm1": dnll_pm, "min_valid_frac": tab["valid_frac"].min(),
            "side_effects_at_c_up": at["side_effects"].get(me.c_up, math.nan) if "side_effects" in at else math.nan,
        })
    return pd.DataFrame(lines)


def seed_table(methods: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over training seeds of every metric of `method_table` (METHOD: report ≥ 3 seeds)."""
    return M.aggregate_seeds(methods.drop(columns=["c_up", "c_down"]), by=("method",))
