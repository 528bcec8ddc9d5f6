"""A fair match for the generation task (issue 17 A): each method's strength is chosen on the `dev` prompts at
a fluency budget, then reported on the `test` prompts.

Per method and seed (`Matcher.run`):

1. **Dev sweep** (`dev_sweep`): the method's grid, in its own units, on the dev prompts. While a side has not
   left the largest budget (no point out of it), `next_points` adds 1.5x and 2x its largest |c| (at most
   `2**extend` times the grid's largest |c|), so random vectors, LoRA(c) and every vector are pushed until they
   leave it; while a side's first point is already out of the smallest budget, it adds half of that point (at
   most `refine` halvings), so a steep method's crossing is not read off one coarse segment.
2. **Choice** (`choose_side`): walking outward from c = 0 on each side, a point is in budget b while its
   mean continuation NLL is at most NLL(0) + b, its mean distinct-2 at least `distinct_frac` of c = 0's and its
   valid fraction at least `min_valid` (or c = 0's own fraction, if lower). At the first point out: when only
   the NLL left the budget, c*_b interpolates the dev mean NLL linearly to exactly NLL(0) + b between the last
   point in and that point ("nll"); when distinct-2 or validity left it, c*_b is the last point in
   ("distinct-2" / "valid"). A side that never leaves keeps its largest point ("grid end"). Methods with fixed
   states (`Steerer.fixed_states`: prompting's c in {-1, 0, +1}) keep their one point per side ("fixed"), flagged
   over budget where it exceeds one. The choice reads fluency only, never a concept score, and only dev rows.
3. **Test** (`matched_results`): the method scored on the test prompts at {0} U {c*_b}; per budget and scorer
   the range score(c*+) - score(c*-), each side's shift from c = 0 with a paired bootstrap CI over prompts, %
   valid, and the NLL cost realised on test (a dev-chosen c may over- or undershoot there: reported, never
   re-picked).

Scores are means over valid rows only (`gen_metrics.gate_validity`); NLL and distinct-2 are over all rows.
`word_attribution` and `range_without` say which words of VADER's lexicon carry each side's shift.
Everything here reads frames; the model is only reached through the tasks' `score`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from innerpissa.eval.gen_metrics import valid_scores
from innerpissa.eval.stats import paired_nanmean_diff_ci, spearman
from innerpissa.eval.task import score_with_base

SCORE_PREFIX = "score:"
SIDES = (("+", 1.0), ("-", -1.0))
#: significant digits of a chosen c (the coefficient scored on test and shown in tables)
C_DIGITS = 4


def score_columns(df: pd.DataFrame) -> list[str]:
    """The per-scorer columns (`score:<name>`) of a frame, in order; the headline is the first."""
    return [c for c in df.columns if c.startswith(SCORE_PREFIX)]


def round_c(c: float, digits: int | None = C_DIGITS) -> float:
    return float(c) if digits is None or c == 0 else float(f"{c:.{digits}g}")


# ------------------------------------------------------------------------------------------- per condition


def conditions(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, seed, c): `n`, over all rows `nll`, `distinct2`, `rep3`, `valid` (fraction), and per scorer
    column `score:<name>` the mean over the valid rows."""
    scores = score_columns(df)
    rows = []
    for (method, seed, c), g in df.groupby(["method", "seed", "c"], sort=True):
        row = {"method": method, "seed": seed, "c": float(c), "n": len(g), "nll": float(g["nll"].mean()),
               "distinct2": float(g["distinct2"].mean()), "rep3": float(g["rep3"].mean()),
               "valid": float(g["valid"].astype(bool).mean())}
        row.update({s: float(valid_scores(g, s).mean()) for s in scores})
        rows.append(row)
    return pd.DataFrame(rows)


def _reference(tab: pd.DataFrame) -> pd.Series:
    base = tab[tab["c"] == 0.0]
    if base.empty:
        raise ValueError("the sweep has no c = 0 row; the fluency budget is measured against c = 0")
    return base.iloc[0]


def _side(tab: pd.DataFrame, sign: float) -> pd.DataFrame:
    side = tab[tab["c"] * sign > 0]
    return side.iloc[np.argsort(side["c"].abs().to_numpy(), kind="stable")]


def _checks(row: pd.Series, ref: pd.Series, budget: float, distinct_frac: float,
            min_valid: float) -> tuple[bool, list[str]]:
    """(NLL within budget, the other constraints that fail: 'distinct-2', 'valid')."""
    nll_ok = bool(np.isfinite(row["nll"]) and row["nll"] <= ref["nll"] + budget)
    other = []
    if not row["distinct2"] >= distinct_frac * ref["distinct2"]:
        other.append("distinct-2")
    if not row["valid"] >= min(min_valid, ref["valid"]):
        other.append("valid")
    if not np.isfinite(row["nll"]) and not other:
        other.append("valid")  # no continuation to measure: nothing to interpolate
    return nll_ok, other


@dataclass(frozen=True)
class Choice:
    """One side's chosen strength at one budget, and what the dev sweep says about it."""

    c: float
    how: str  # nll (interpolated to the budget), distinct-2 / valid (the last point in), grid end, fixed [over: why]
    dev_cost: float  # NLL(c) - NLL(0) on dev (interpolated for "nll": the budget itself)
    over: bool = False  # a fixed state that exceeds the budget


def choose_side(tab: pd.DataFrame, sign: float, budget: float, distinct_frac: float = 0.9, min_valid: float = 0.9,
                fixed: bool = False, digits: int | None = C_DIGITS) -> Choice:
    """c*_b on one side (`sign` +1 or -1) of one method and seed's dev conditions (`conditions`); see the
    module doc. Reads `nll`, `distinct2` and `valid` only."""
    ref = _reference(tab)
    side = _side(tab, sign)
    if fixed:
        if side.empty:
            return Choice(0.0, "fixed", 0.0)
        row = side.iloc[-1]
        nll_ok, other = _checks(row, ref, budget, distinct_frac, min_valid)
        over = ([] if nll_ok else ["nll"]) + other
        return Choice(float(row["c"]), "fixed" + (f" over: {'+'.join(over)}" if over else ""),
                      float(row["nll"] - ref["nll"]), bool(over))
    limit = ref["nll"] + budget
    last = ref
    for _, row in side.iterrows():
        nll_ok, other = _checks(row, ref, budget, distinct_frac, min_valid)
        if nll_ok and not other:
            last = row
            continue
        if other:
            return Choice(float(last["c"]), "+".join(other), float(last["nll"] - ref["nll"]))
        t = (limit - last["nll"]) / (row["nll"] - last["nll"])
        c = float(last["c"] + t * (row["c"] - last["c"]))
        return Choice(round_c(c, digits), "nll", float(budget))
    return Choice(float(last["c"]), "grid end", float(last["nll"] - ref["nll"]))


def choose(tab: pd.DataFrame, budgets: Sequence[float], distinct_frac: float = 0.9, min_valid: float = 0.9,
           fixed: bool = False, digits: int | None = C_DIGITS) -> pd.DataFrame:
    """Every (budget, side) choice of one method and seed: columns budget, side, c, how, dev_cost, over."""
    rows = []
    for b in budgets:
        for side, sign in SIDES:
            ch = choose_side(tab, sign, b, distinct_frac, min_valid, fixed, digits)
            rows.append({"budget": float(b), "side": side, "c": ch.c, "how": ch.how, "dev_cost": ch.dev_cost,
                         "over": ch.over})
    return pd.DataFrame(rows)


def next_points(tab: pd.DataFrame, budgets: Sequence[float], distinct_frac: float, min_valid: float,
                max_abs: float, min_abs: float) -> list[float]:
    """The coefficients the dev sweep adds next (see the module doc); [] when every side is settled."""
    ref = _reference(tab)
    big, small = max(budgets), min(budgets)
    new = []
    for _, sign in SIDES:
        side = _side(tab, sign)
        if side.empty:
            continue
        left = any(not (ok and not other) for ok, other in
                   (_checks(r, ref, big, distinct_frac, min_valid) for _, r in side.iterrows()))
        if not left:
            top = float(side["c"].abs().max())
            new += [sign * round_c(top * f) for f in (1.5, 2.0) if top * f <= max_abs * (1 + 1e-9)]
        first = side.iloc[0]
        ok, other = _checks(first, ref, small, distinct_frac, min_valid)
        half = abs(float(first["c"])) / 2
        if not (ok and not other) and half >= min_abs * (1 - 1e-9):
            new.append(sign * round_c(half))
    return sorted(set(new))


def dev_sweep(score: Callable[[list[float]], pd.DataFrame], grid: Sequence[float], budgets: Sequence[float],
              distinct_frac: float = 0.9, min_valid: float = 0.9, extend: int = 5, refine: int = 2,
              fixed: bool = False) -> pd.DataFrame:
    """The dev rows of one method and seed: `score(coeffs)` (one frame per call) at `grid` U {0}, then at the
    points `next_points` asks for until none is left (bounded by `extend` doublings and `refine` halvings)."""
    coeffs = sorted({float(c) for c in grid} | {0.0})
    frames = [score(coeffs)]
    moved = [abs(c) for c in coeffs if c != 0]
    if fixed or not moved:
        return pd.concat(frames, ignore_index=True)
    max_abs, min_abs = max(moved) * 2.0 ** extend, min(moved) / 2.0 ** refine
    seen = set(coeffs)
    while True:
        df = pd.concat(frames, ignore_index=True)
        new = [c for c in next_points(conditions(df), budgets, distinct_frac, min_valid, max_abs, min_abs)
               if c not in seen]
        if not new:
            return df
        seen.update(new)
        frames.append(score(new))


# ------------------------------------------------------------------------------------------------- on test


def _by_prompt(g: pd.DataFrame, c: float, column: str) -> pd.Series:
    return valid_scores(g[g["c"] == c].set_index("prompt_idx"), column)


def _side_c(ch: pd.DataFrame, budget: float, side: str) -> pd.Series:
    sel = ch[(ch["budget"] == budget) & (ch["side"] == side)]
    if len(sel) != 1:
        raise ValueError(f"expected one choice for budget {budget} side {side}, got {len(sel)}")
    return sel.iloc[0]


def matched_results(test: pd.DataFrame, choices: pd.DataFrame, dev_tab: pd.DataFrame | None = None,
                    n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (method, seed, budget, scorer): the chosen c+ / c-, how each was chosen and its dev cost, the test
    range and side shifts (paired bootstrap CIs over prompts, invalid rows excluded), % valid at c+, c- and 0,
    the NLL cost realised on test at each side, and Spearman(c, score) over the dev grid (`dev_tab`)."""
    rows = []
    for (method, sd), ch in choices.groupby(["method", "seed"], sort=False):
        g = test[(test["method"] == method) & (test["seed"] == sd)]
        if not (g["c"] == 0.0).any():
            raise ValueError(f"{method} seed {sd}: no c = 0 rows on test")
        nll0, valid0 = float(g[g["c"] == 0]["nll"].mean()), float(g[g["c"] == 0]["valid"].astype(bool).mean())
        dt = None if dev_tab is None else dev_tab[(dev_tab["method"] == method) & (dev_tab["seed"] == sd)]
        for b in sorted(ch["budget"].unique()):
            plus, minus = _side_c(ch, b, "+"), _side_c(ch, b, "-")
            base = {"method": method, "seed": sd, "budget": float(b), "c_plus": float(plus["c"]),
                    "c_minus": float(minus["c"]), "how_plus": plus["how"], "how_minus": minus["how"],
                    "dev_cost_plus": float(plus["dev_cost"]), "dev_cost_minus": float(minus["dev_cost"]),
                    "over_plus": bool(plus["over"]), "over_minus": bool(minus["over"]), "valid0": valid0}
            for name, c in (("plus", plus["c"]), ("minus", minus["c"])):
                at = g[g["c"] == c]
                if at.empty:
                    raise ValueError(f"{method} seed {sd}: the chosen c = {c} was not scored on test")
                base[f"valid_{name}"] = float(at["valid"].astype(bool).mean())
                base[f"cost_{name}"] = float(at["nll"].mean()) - nll0
            for col in score_columns(g):
                r = dict(base, scorer=col.removeprefix(SCORE_PREFIX))
                s0 = _by_prompt(g, 0.0, col)
                sp, sm = _by_prompt(g, plus["c"], col), _by_prompt(g, minus["c"], col)
                r["score0"] = float(s0.mean())
                r["d_plus"], r["d_plus_lo"], r["d_plus_hi"] = paired_nanmean_diff_ci(sp, s0, n_boot, seed)
                r["d_minus"], r["d_minus_lo"], r["d_minus_hi"] = paired_nanmean_diff_ci(sm, s0, n_boot, seed)
                r["range"], r["range_lo"], r["range_hi"] = paired_nanmean_diff_ci(sp, sm, n_boot, seed)
                r["plus_excl0"] = bool(r["d_plus_lo"] > 0)
                r["minus_excl0"] = bool(r["d_minus_hi"] < 0)
                r["spearman_dev"] = (spearman(dt["c"], dt[col]) if dt is not None and col in dt else math.nan)
                rows.append(r)
    return pd.DataFrame(rows)


def _per_seed(values: pd.Series, fmt: str = "{:+.3f}") -> str:
    return ", ".join("-" if v != v else fmt.format(v) for v in values)


def method_budget_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Seeds aggregated per (method, budget, scorer): mean range with its sd over seeds and the per-seed ranges,
    mean side shifts and % valid, how many seeds have both sides' CI excluding c = 0, mean dev Spearman, the
    chosen c per seed, and the realised test NLL cost (mean of the two sides, and each side's)."""
    rows = []
    for (method, b, scorer), g in matched.groupby(["method", "budget", "scorer"], sort=False):
        cost = (g["cost_plus"] + g["cost_minus"]) / 2
        rows.append({
            "method": method, "budget": b, "scorer": scorer, "seeds": len(g), "range": float(g["range"].mean()),
            "range_sd": float(g["range"].std(ddof=1)) if len(g) > 1 else math.nan,
            "ranges": _per_seed(g["range"]), "d_plus": float(g["d_plus"].mean()),
            "d_minus": float(g["d_minus"].mean()), "valid_plus": float(g["valid_plus"].mean()),
            "valid_minus": float(g["valid_minus"].mean()), "valid0": float(g["valid0"].mean()),
            "both_excl0": int((g["plus_excl0"] & g["minus_excl0"]).sum()),
            "spearman_dev": float(g["spearman_dev"].mean()),
            "c_plus": _per_seed(g["c_plus"], "{:+.4g}"), "c_minus": _per_seed(g["c_minus"], "{:+.4g}"),
            "how": ", ".join(sorted(set(g["how_plus"]) | set(g["how_minus"]))),
            "over": bool((g["over_plus"] | g["over_minus"]).any()),
            "cost": float(cost.mean()), "cost_sd": float(cost.std(ddof=1)) if len(g) > 1 else math.nan,
            "cost_plus": float(g["cost_plus"].mean()), "cost_minus": float(g["cost_minus"].mean()),
            "dev_cost_plus": float(g["dev_cost_plus"].mean()), "dev_cost_minus": float(g["dev_cost_minus"].mean()),
        })
    return pd.DataFrame(rows)


def sort_methods(summary: pd.DataFrame, budget: float, scorer: str) -> list[str]:
    """Methods by their range at (`budget`, `scorer`) when present (else the first budget and scorer), best
    first; methods without that row last."""
    if summary.empty:
        return []
    if not ((summary["budget"] == budget) & (summary["scorer"] == scorer)).any():
        budget, scorer = summary["budget"].iloc[0], summary["scorer"].iloc[0]
    key = summary[(summary["budget"] == budget) & (summary["scorer"] == scorer)].set_index("method")["range"]

    def order(m: str) -> tuple[int, float]:
        r = float(key.get(m, math.nan))
        return (0, -r) if r == r else (1, 0.0)

    return sorted(dict.fromkeys(summary["method"]), key=order)


# -------------------------------------------------------------------------------------------- attribution

_EDGE_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def lexicon_tokens(text: str) -> list[str]:
    """VADER's word units: whitespace-split, lower-cased, edge punctuation stripped (kept when stripping would
    leave fewer than 3 characters, as VADER does, so emoticons such as ':)' survive)."""
    out = []
    for tok in str(text).split():
        stripped = tok.strip(_EDGE_PUNCT)
        out.append((stripped if len(stripped) > 2 else tok).lower())
    return out


def vader_lexicon() -> dict[str, float]:
    """VADER's lexicon: word -> mean valence (-4 .. +4)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return dict(SentimentIntensityAnalyzer().lexicon)


def word_shift(texts_c: Sequence[str], texts_0: Sequence[str], lexicon: Mapping[str, float]) -> pd.DataFrame:
    """Per lexicon word: occurrences in `texts_c` minus in `texts_0` (paired texts, summed over them), its
    valence and their product (`contribution`); words whose count did not change are left out."""
    counts_c = Counter(t for text in texts_c for t in lexicon_tokens(text) if t in lexicon)
    counts_0 = Counter(t for text in texts_0 for t in lexicon_tokens(text) if t in lexicon)
    rows = [{"word": w, "delta_count": counts_c[w] - counts_0[w], "valence": float(lexicon[w])}
            for w in sorted(set(counts_c) | set(counts_0)) if counts_c[w] != counts_0[w]]
    df = pd.DataFrame(rows, columns=["word", "delta_count", "valence"])
    return df.assign(contribution=df["delta_count"] * df["valence"])


def word_attribution(test: pd.DataFrame, choices: pd.DataFrame, budget: float,
                     lexicon: Mapping[str, float]) -> pd.DataFrame:
    """Per (method, seed, side) at `budget`: `word_shift` between the continuations at c* and at c = 0 of the
    prompts valid at both (the rows the score means use)."""
    out = []
    for (method, sd), ch in choices[choices["budget"] == budget].groupby(["method", "seed"], sort=False):
        g = test[(test["method"] == method) & (test["seed"] == sd)]
        zero = g[g["c"] == 0].set_index("prompt_idx")
        for _, choice in ch.iterrows():
            at = g[g["c"] == choice["c"]].set_index("prompt_idx")
            both = at.index.intersection(zero.index)
            both = [p for p in both if bool(at.at[p, "valid"]) and bool(zero.at[p, "valid"])]
            ws = word_shift(at.loc[both, "continuation"].fillna("").tolist(),
                            zero.loc[both, "continuation"].fillna("").tolist(), lexicon)
            out.append(ws.assign(method=method, seed=sd, side=choice["side"], c=float(choice["c"]),
                                 n_prompts=len(both)))
    cols = ["method", "seed", "side", "c", "n_prompts", "word", "delta_count", "valence", "contribution"]
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def top_words(attr: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Per (method, side), summed over seeds: the `k` words that push the side its way most (+: the largest
    contributions, -: the most negative), each with its `share` of the side's push its way (the sum of the
    contributions of that sign, `side_push`), and the side's net lexicon shift (`side_total`, all words)."""
    rows = []
    for (method, side), g in attr.groupby(["method", "side"], sort=False):
        per = g.groupby("word").agg(contribution=("contribution", "sum"), delta_count=("delta_count", "sum"),
                                    valence=("valence", "first"))
        sign = 1.0 if side == "+" else -1.0
        per = per[per["contribution"] * sign > 0]
        push = float(per["contribution"].sum())
        per = per.assign(order=-per["contribution"].abs()).sort_values(["order"], kind="stable").head(k)
        for rank, (w, r) in enumerate(per.iterrows(), 1):
            rows.append({"method": method, "side": side, "rank": rank, "word": w,
                         "delta_count": int(r["delta_count"]), "valence": r["valence"],
                         "contribution": float(r["contribution"]), "side_push": push,
                         "side_total": float(g["contribution"].sum()),
                         "share": float(r["contribution"] / push) if push else math.nan})
    return pd.DataFrame(rows, columns=["method", "side", "rank", "word", "delta_count", "valence", "contribution",
                                       "side_push", "side_total", "share"])


def remove_words(text: str, words: Sequence[str]) -> str:
    """`text` without the whole-word occurrences of `words` (case-insensitive), spaces tidied."""
    if not words:
        return str(text)
    pattern = r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)"
    return re.sub(r"\s+", " ", re.sub(pattern, "", str(text), flags=re.IGNORECASE)).strip()


def range_without(test: pd.DataFrame, choices: pd.DataFrame, budget: float, words: Mapping[str, Sequence[str]],
                  scorers: Mapping[str, Callable[[Sequence[str]], np.ndarray]]) -> pd.DataFrame:
    """Per (method, seed, scorer): the range at `budget` recomputed after removing `words[method]` from every
    continuation at c+ and c- (rescored by each of `scorers`, by name; validity kept as it was)."""
    rows = []
    for (method, sd), ch in choices[choices["budget"] == budget].groupby(["method", "seed"], sort=False):
        g = test[(test["method"] == method) & (test["seed"] == sd)]
        removed = list(words.get(method, ()))
        cp, cm = _side_c(ch, budget, "+")["c"], _side_c(ch, budget, "-")["c"]
        for name, scorer in scorers.items():
            side_scores = []
            for c in (cp, cm):
                at = g[g["c"] == c].set_index("prompt_idx")
                s = pd.Series(scorer([remove_words(t, removed) for t in at["continuation"].fillna("")]),
                              index=at.index)
                side_scores.append(s.where(at["valid"].astype(bool)))
            rows.append({"method": method, "seed": sd, "scorer": name, "removed": ", ".join(removed),
                         "range_without": paired_nanmean_diff_ci(*side_scores, n_boot=1)[0]})
    return pd.DataFrame(rows, columns=["method", "seed", "scorer", "removed", "range_without"])


# ------------------------------------------------------------------------------------------------ protocol


@dataclass
class Matcher:
    """Runs the protocol for each steerer and keeps what the report needs: the dev rows, the choices, the test
    rows. `test` may be `dev` itself (`ablate`: chosen and reported on the choosing split); then the rows the
    sweep already has are reused. c = 0 rows come from each task's `base()` (scored once)."""

    dev: Any
    test: Any
    budgets: Sequence[float] = (0.1, 0.25, 0.5)
    distinct_frac: float = 0.9
    min_valid: float = 0.9
    extend: int = 5
    refine: int = 2
    dev_frames: list[pd.DataFrame] = field(default_factory=list)
    test_frames: list[pd.DataFrame] = field(default_factory=list)
    choice_frames: list[pd.DataFrame] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.budgets or min(self.budgets) <= 0:
            raise ValueError(f"fluency budgets must be positive nats, got {list(self.budgets)}")
        self.dev_base = self.dev.base()
        self.test_base = self.dev_base if self.test is self.dev else self.test.base()

    def run(self, steerer, grid: Sequence[float], seed: int, train_seconds: float = 0.0) -> pd.DataFrame:
        """The dev sweep from `grid` (a fixed-state steerer: its own states), the choices, the test rows at
        them; returns the choices (method, seed, budget, side, c, how, dev_cost, over)."""
        fixed = bool(getattr(steerer, "fixed_states", False))
        dev_rows = dev_sweep(lambda cs: score_with_base(self.dev, self.dev_base, steerer, cs, seed, train_seconds),
                             steerer.default_coeffs if fixed else grid, self.budgets, self.distinct_frac,
                             self.min_valid, self.extend, self.refine, fixed)
        ch = choose(conditions(dev_rows), self.budgets, self.distinct_frac, self.min_valid, fixed)
        ch = ch.assign(method=steerer.name, seed=seed)
        wanted = sorted(set(ch["c"]) | {0.0})
        if self.test is self.dev:
            have = dev_rows[dev_rows["c"].isin(wanted)]
            todo = [c for c in wanted if c not in set(dev_rows["c"])]
            parts = [have] + ([self.dev.score(steerer, todo, seed).assign(train_seconds=train_seconds)]
                              if todo else [])
            test_rows = pd.concat(parts, ignore_index=True)
        else:
            test_rows = score_with_base(self.test, self.test_base, steerer, wanted, seed, train_seconds)
        self.dev_frames.append(dev_rows)
        self.test_frames.append(test_rows)
        self.choice_frames.append(ch)
        at = ch[ch["budget"] == sorted(self.budgets)[len(self.budgets) // 2]]
        print(f"  {steerer.name} seed {seed}: {dev_rows['c'].nunique()} dev points; at {at['budget'].iloc[0]:g} nats "
              + ", ".join(f"c*{r.side} {r.c:+.4g} ({r.how})" for r in at.itertuples()), flush=True)
        return ch
