"""Pure metrics of the generation evaluation (METHOD section 11): concept score, repetition, and the summary.

Nothing here touches a model. The concept score comes from a `Scorer` (texts -> one number each) that is not
the steered model: for sentiment, VADER's compound score in [-1, 1]. Fluency is the per-token NLL of the
continuation under the unsteered model (computed in `generation.py`) plus repetition measures on words.

A continuation is valid when it has words, does not loop (distinct-2) and does not repeat its 3-grams beyond a
gate (`gate_validity`); invalid rows are left out of every score mean (and counted), while NLL and distinct-2
stay over all rows, so the fluency cost of degenerate rows counts.

The old headline (`matched_range`, `compare --gen.select same-split`): per method and seed, the c+ and c- sides
are the largest |c| on each side whose mean NLL is within `nll_budget` nats of the method's c = 0 and whose
mean distinct-2 is at least `distinct_frac` of c = 0's, on the prompts it reports; the range is score(c+) -
score(c-), each side's shift from c = 0 with a paired bootstrap CI over prompts. The default protocol chooses
on the dev prompts and reports on test (`eval/matching.py`). Both read only fluency, never the concept score.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from innerpissa.errors import InputError
from innerpissa.eval.stats import bootstrap_mean_ci, paired_nanmean_diff_ci, spearman

_WORD = re.compile(r"\w+|[^\w\s]")
MIN_WORDS = 4
#: the repetition gate (`--gen.max-rep3`): a continuation whose repeated-3-gram fraction exceeds it is a loop.
#: Chosen on the dev prompts' unsteered and over-steered continuations (bench/rep3_gate.py, docs/RESULTS.md):
#: see `GenSettings.max_rep3`.
DEFAULT_MAX_REP3 = 0.2


class Scorer(Protocol):
    """A concept scorer independent of the steered model: higher = more of the concept's positive pole."""

    name: str

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


class VaderScorer:
    """VADER compound sentiment in [-1, 1] (lexicon and rules; `pip install vaderSentiment`)."""

    name = "vader_compound"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError("the sentiment scorer needs vaderSentiment: pip install vaderSentiment") from e
        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self._analyzer.polarity_scores(str(t))["compound"] for t in texts], dtype=float)


class TextBlobScorer:
    """TextBlob's polarity in [-1, 1] (the Pattern lexicon of adjectives with intensifiers and negation; a second
    lexicon beside VADER's, `pip install textblob`). Its sentiment needs no NLTK corpus download."""

    name = "textblob_polarity"

    def __init__(self) -> None:
        try:
            from textblob import TextBlob
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError("the textblob scorer needs textblob: pip install textblob") from e
        self._blob = TextBlob

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self._blob(str(t)).sentiment.polarity for t in texts], dtype=float)


class FunctionScorer:
    """A user's scorer named `module:function`: a function of one text returning a float (higher = more of the
    concept). Its `identity` covers the function's source, so editing it invalidates cached scores."""

    def __init__(self, spec: str):
        module, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise InputError(f"--gen.scorer {spec}: cannot import {attr!r} from module {module!r} ({e}); the module "
                             "must be importable (e.g. run from its folder with PYTHONPATH=.)") from None
        if not callable(fn):
            raise InputError(f"--gen.scorer {spec}: {attr} is not a function")
        self.fn, self.name = fn, spec
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            source = ""
        self.identity = f"{spec}#{hashlib.sha256(source.encode()).hexdigest()[:12]}"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for t in texts:
            value = self.fn(str(t))
            try:
                out.append(float(value))
            except (TypeError, ValueError):
                raise InputError(f"--gen.scorer {self.name} returned {value!r} for {str(t)[:40]!r}; it must "
                                 "return a number") from None
        return np.array(out, dtype=float)


#: built-in scorers by name, and those each concept is scored with (`--gen.scorer builtin` takes the first, the
#: headline; `--gen.scorers` left unset takes them all)
SCORERS: dict[str, type] = {"vader": VaderScorer, "textblob": TextBlobScorer}
CONCEPT_SCORERS: dict[str, tuple[str, ...]] = {"sentiment": ("vader", "textblob")}


def scorer_specs(scorer: str = "builtin", scorers: Sequence[str] | None = None,
                 concept: str = "sentiment") -> list[str]:
    """The scorer names a generation task reports, headline first: `scorers` when given (then `scorer` must be
    left at `builtin` or equal its first), else the concept's built-in ones for `scorer="builtin"`, else
    `[scorer]`. Names are resolved (`builtin` becomes the concept's first) and deduplicated."""
    if scorers:
        if scorer not in ("builtin", scorers[0]):
            raise InputError(f"--gen.scorer {scorer} and --gen.scorers {' '.join(scorers)} disagree on the headline "
                             "scorer; give only --gen.scorers (its first is the headline)")
        specs = list(scorers)
    elif scorer == "builtin":
        specs = list(CONCEPT_SCORERS.get(concept, ("builtin",)))
    else:
        specs = [scorer]
    out = []
    for spec in specs:
        if spec == "builtin":
            make_scorer(spec, concept)  # raises, naming the choices, for a concept without a built-in scorer
            spec = CONCEPT_SCORERS[concept][0]
        if spec not in out:
            out.append(spec)
    return out


def make_scorer(spec: str = "builtin", concept: str = "sentiment") -> Scorer:
    """The scorer `spec` names: `builtin` (the concept's first), a name in `SCORERS`, or `module:function`."""
    if spec == "builtin":
        if concept not in CONCEPT_SCORERS:
            raise InputError(f"no built-in generation scorer for concept {concept!r} (built-in: "
                             f"{sorted(CONCEPT_SCORERS)}); give --gen.scorer NAME ({', '.join(SCORERS)}) or "
                             "module:function")
        spec = CONCEPT_SCORERS[concept][0]
    if spec in SCORERS:
        return SCORERS[spec]()
    if ":" in spec:
        return FunctionScorer(spec)
    raise InputError(f"unknown --gen.scorer {spec!r}; use builtin, one of {sorted(SCORERS)} or module:function")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks (tokenizer-independent units for repetition measures)."""
    return _WORD.findall(str(text).lower())


def distinct_n(text: str, n: int = 2) -> float:
    """Unique n-grams / n-grams of the text's words (1 = no repeat); NaN when it has no n-gram."""
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Fraction of n-gram occurrences that repeat an earlier one (0 = none); NaN when it has no n-gram."""
    d = distinct_n(text, n)
    return 1.0 - d if d == d else float("nan")


def is_valid(text: str, min_words: int = MIN_WORDS, min_distinct2: float = 0.5) -> bool:
    """A usable continuation: at least `min_words` words and not a loop (distinct-2 >= `min_distinct2`)."""
    w = words(text)
    return len(w) >= min_words and distinct_n(text, 2) >= min_distinct2


def gate_validity(df: pd.DataFrame, max_rep3: float = DEFAULT_MAX_REP3) -> pd.DataFrame:
    """`df` (rows with `continuation` and `rep3`) with `valid` recomputed from the text: `is_valid` (words and
    distinct-2) and a repeated-3-gram fraction of at most `max_rep3` (a text too short to have a 3-gram is
    already invalid by its word count). Applied after the score cache, so the gate is a report setting."""
    text_ok = np.array([is_valid(t) for t in df["continuation"].fillna("")], dtype=bool)
    rep = df["rep3"].to_numpy(dtype=float)
    return df.assign(valid=text_ok & (np.nan_to_num(rep, nan=1.0) <= max_rep3))


def text_metrics(texts: Sequence[str], scorer: Scorer) -> pd.DataFrame:
    """Per text: `score`, `distinct2`, `rep3`, `valid`."""
    return pd.DataFrame({"score": scorer(list(texts)),
                         "distinct2": [distinct_n(t, 2) for t in texts],
                         "rep3": [repeated_ngram_fraction(t, 3) for t in texts],
                         "valid": [is_valid(t) for t in texts]})


# ------------------------------------------------------------------------------------------------ summaries


def valid_scores(g: pd.DataFrame, column: str = "score") -> pd.Series:
    """`column` with the invalid rows' values set to NaN (excluded from means; NLL and distinct-2 are not)."""
    return g[column].where(g["valid"].astype(bool))


def coeff_summary(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (method, seed, c): mean score over the valid rows with its bootstrap CI over prompts, and over all
    rows NLL, distinct-2, rep-3 and the fraction of valid rows.

    `df` has one row per (method, seed, c, prompt) with columns `score`, `nll`, `distinct2`, `rep3`, `valid`.
    """
    rows = []
    for (method, s, c), g in df.groupby(["method", "seed", "c"], sort=True):
        sc = valid_scores(g)
        lo, hi = bootstrap_mean_ci(sc.to_numpy(), n_boot, seed)
        rows.append({"method": method, "seed": s, "c": float(c), "n": len(g), "score": float(sc.mean()),
                     "score_lo": lo, "score_hi": hi, "nll": float(g["nll"].mean()),
                     "distinct2": float(g["distinct2"].mean()), "rep3": float(g["rep3"].mean()),
                     "valid": float(g["valid"].mean())})
    return pd.DataFrame(rows)


def _scores(g: pd.DataFrame, c: float) -> pd.Series:
    """One condition's scores by prompt (NaN where the row is invalid)."""
    return valid_scores(g[g["c"] == c].set_index("prompt_idx"))


def pick_sides(tab: pd.DataFrame, nll_budget: float, distinct_frac: float) -> tuple[float | None, float | None]:
    """(c+, c-): the largest |c| on each side within the fluency budget relative to c = 0 (None if none).

    `tab`: one method and seed of `coeff_summary`. Reads only `nll` and `distinct2`, never the score.
    """
    base = tab[tab["c"] == 0.0]
    if base.empty:
        raise ValueError("the sweep has no c = 0 row; the fluency budget is measured against c = 0")
    nll0, d0 = float(base["nll"].iloc[0]), float(base["distinct2"].iloc[0])
    ok = tab[(tab["nll"] <= nll0 + nll_budget) & (tab["distinct2"] >= distinct_frac * d0)]
    pos, neg = ok[ok["c"] > 0]["c"], ok[ok["c"] < 0]["c"]
    return (float(pos.max()) if len(pos) else None), (float(neg.min()) if len(neg) else None)


def matched_range(df: pd.DataFrame, tab: pd.DataFrame, nll_budget: float = 0.25, distinct_frac: float = 0.9,
                  n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (method, seed): the sides `pick_sides` chooses, each side's shift from c = 0 with a paired
    bootstrap CI over prompts, the range score(c+) - score(c-) with its CI, % valid at each side, and the
    Spearman correlation of the mean score with c over the whole sweep (monotonicity)."""
    rows = []
    for (method, s), t in tab.groupby(["method", "seed"], sort=True):
        g = df[(df["method"] == method) & (df["seed"] == s)]
        cp, cm = pick_sides(t, nll_budget, distinct_frac)
        score = dict(zip(t["c"], t["score"], strict=True))
        valid = dict(zip(t["c"], t["valid"], strict=True))
        row = {"method": method, "seed": s, "c_plus": cp, "c_minus": cm, "score0": score[0.0],
               "spearman": spearman(t["c"], t["score"])}
        for side, c in (("plus", cp), ("minus", cm)):
            if c is None:
                row.update({f"d_{side}": float("nan"), f"d_{side}_lo": float("nan"),
                            f"d_{side}_hi": float("nan"), f"valid_{side}": float("nan")})
                continue
            d, lo, hi = paired_nanmean_diff_ci(_scores(g, c), _scores(g, 0.0), n_boot, seed)
            row.update({f"d_{side}": d, f"d_{side}_lo": lo, f"d_{side}_hi": hi, f"valid_{side}": valid[c]})
        cp_, cm_ = (cp if cp is not None else 0.0), (cm if cm is not None else 0.0)
        row["range"], row["range_lo"], row["range_hi"] = paired_nanmean_diff_ci(_scores(g, cp_), _scores(g, cm_),
                                                                                   n_boot, seed)
        row["plus_excludes0"] = bool(row["d_plus_lo"] > 0)
        row["minus_excludes0"] = bool(row["d_minus_hi"] < 0)
        rows.append(row)
    return pd.DataFrame(rows)


def method_summary(ranges: pd.DataFrame) -> pd.DataFrame:
    """Seeds aggregated per method: mean range with its spread over seeds (sd, min, max), mean side shifts,
    how many seeds have each side's CI excluding c = 0, mean % valid at the chosen sides, mean Spearman."""
    rows = []
    for method, g in ranges.groupby("method", sort=False):
        rows.append({
            "method": method, "seeds": len(g), "range": float(g["range"].mean()),
            "range_sd": float(g["range"].std(ddof=1)) if len(g) > 1 else float("nan"),
            "range_min": float(g["range"].min()), "range_max": float(g["range"].max()),
            "d_plus": float(g["d_plus"].mean()), "d_minus": float(g["d_minus"].mean()),
            "both_sides_excl0": int((g["plus_excludes0"] & g["minus_excludes0"]).sum()),
            "valid_plus": float(g["valid_plus"].mean()), "valid_minus": float(g["valid_minus"].mean()),
            "spearman": float(g["spearman"].mean()),
            "c_plus": ",".join(f"{c:g}" if c is not None and c == c else "-" for c in g["c_plus"]),
            "c_minus": ",".join(f"{c:g}" if c is not None and c == c else "-" for c in g["c_minus"]),
        })
    return pd.DataFrame(rows).sort_values("range", ascending=False).reset_index(drop=True)
