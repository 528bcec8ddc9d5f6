"""The generation metrics' details pinned by hand (found by mutation testing, `make mutate`): defaults, the
boundaries of the validity and fluency rules, column names, seeds reaching the bootstrap, orderings, and the
messages of the scorer errors. test_generation.py holds the main cases; these are the edges it left open."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest

from innerpissa.eval import gen_metrics as gm
from innerpissa.eval.stats import bootstrap_mean_ci


def test_words_are_lower_cased_units():
    assert gm.words("The CAT, sat.") == ["the", "cat", ",", "sat", "."]


def test_default_orders_and_the_no_ngram_case():
    assert gm.distinct_n("a b a b") == pytest.approx(2 / 3)  # default n = 2: ab ba ab
    assert gm.repeated_ngram_fraction("a b a b a b") == pytest.approx(0.5)  # default n = 3: aba bab aba bab
    assert math.isnan(gm.repeated_ngram_fraction("one two"))  # no trigram
    assert math.isnan(gm.repeated_ngram_fraction(""))


def test_validity_rule_boundaries():
    assert gm.is_valid("a b c d")  # exactly MIN_WORDS words
    assert not gm.is_valid("a b c")
    assert gm.is_valid("a b a b a")  # distinct-2 exactly 0.5 is enough
    assert not gm.is_valid("a a a a")  # distinct-2 1/3 (distinct-3 would be 0.5)
    assert gm.is_valid("a a a a", min_distinct2=0.3) and not gm.is_valid("a b c d", min_words=5)


class _Length:
    """A scorer of this file: characters / 10 (reads its whole argument as a list)."""

    name = "length"

    def __call__(self, texts):
        assert isinstance(texts, list)
        return np.array([len(t) / 10 for t in texts], dtype=float)


def test_text_metrics_columns_by_hand():
    texts = ["a a a a a", "The sun rose.", "hi"]
    got = gm.text_metrics(texts, _Length())
    assert list(got.columns) == ["score", "distinct2", "rep3", "valid"]
    assert got["score"].tolist() == pytest.approx([0.9, 1.3, 0.2])
    assert got["distinct2"].tolist()[:2] == pytest.approx([1 / 4, 1.0]) and math.isnan(got["distinct2"][2])
    assert got["rep3"].tolist()[:2] == pytest.approx([2 / 3, 0.0]) and math.isnan(got["rep3"][2])
    assert got["valid"].tolist() == [False, True, False]


def test_vader_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)  # the import fails
    with pytest.raises(ImportError) as e:
        gm.VaderScorer()
    assert str(e.value) == "the sentiment scorer needs vaderSentiment: pip install vaderSentiment"


def test_scorer_messages(tmp_path, monkeypatch):
    with pytest.raises(ValueError) as e:
        gm.make_scorer("builtin", "telepathy")
    assert str(e.value) == ("no built-in generation scorer for concept 'telepathy' (built-in: ['sentiment']); give "
                            "--gen.scorer NAME (vader, textblob) or module:function")
    with pytest.raises(ValueError) as e:
        gm.make_scorer("bogus")
    assert str(e.value) == "unknown --gen.scorer 'bogus'; use builtin, one of ['textblob', 'vader'] or module:function"
    (tmp_path / "my_scorers.py").write_text("NOT_A_FUNCTION = 3\n\ndef words(text):\n    return 'many'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as e:
        gm.make_scorer("my_scorers:NOT_A_FUNCTION")
    assert str(e.value) == "--gen.scorer my_scorers:NOT_A_FUNCTION: NOT_A_FUNCTION is not a function"
    scorer = gm.make_scorer("my_scorers:words")
    with pytest.raises(ValueError) as e:
        scorer(["a text"])
    assert str(e.value) == "--gen.scorer my_scorers:words returned 'many' for 'a text'; it must return a number"
    assert gm.make_scorer().name == "vader_compound"  # the default: the sentiment concept's built-in scorer


def _rows(scores: dict[float, list[float]], method="m", seed=0, nll=None, d2=None, invalid=(1,)) -> pd.DataFrame:
    """One row per (c, prompt); the prompts in `invalid` are invalid continuations (left out of score means)."""
    rows = []
    for c, ss in scores.items():
        for i, s in enumerate(ss):
            rows.append({"method": method, "seed": seed, "c": c, "prompt_idx": i, "score": s,
                         "nll": (nll or {}).get(c, 1.0), "distinct2": (d2 or {}).get(c, 1.0), "rep3": 0.1 * i,
                         "valid": i not in invalid})
    return pd.DataFrame(rows)


def test_coeff_summary_sorted_columns_and_seeded_ci():
    df = pd.concat([_rows({1.0: [0.3, 0.5, 0.9], 0.0: [0.1, 0.2, 0.0]}, "zeta"),
                    _rows({-1.0: [0.4, -0.2, 0.1], 0.0: [0.0, 0.3, 0.3]}, "alpha", seed=2)])
    tab = gm.coeff_summary(df.iloc[::-1], n_boot=300, seed=3)  # rows in reverse: the summary still sorts
    assert list(zip(tab["method"], tab["seed"], tab["c"], strict=True)) == [
        ("alpha", 2, -1.0), ("alpha", 2, 0.0), ("zeta", 0, 0.0), ("zeta", 0, 1.0)]
    assert list(tab.columns) == ["method", "seed", "c", "n", "score", "score_lo", "score_hi", "nll", "distinct2",
                                 "rep3", "valid"]
    row = tab.iloc[3]
    # the score is the mean over the valid rows (prompt 1 is invalid: 0.5 left out); valid is over all rows
    assert row["n"] == 3 and row["score"] == pytest.approx(0.6) and row["valid"] == pytest.approx(2 / 3)
    assert row["rep3"] == pytest.approx(0.1)
    # the CI is the bootstrap of the group's scores with the seed given
    s = np.random.default_rng(0).normal(size=12)
    one = gm.coeff_summary(_rows({0.0: list(s)}, invalid=()), n_boot=200, seed=3).iloc[0]
    assert (one["score_lo"], one["score_hi"]) == bootstrap_mean_ci(s, 200, 3) != bootstrap_mean_ci(s, 200, 0)


def test_pick_sides_budget_boundaries_are_inclusive():
    tab = pd.DataFrame({"c": [-2.0, -1.0, 0.0, 1.0, 2.0], "nll": [1.3, 1.25, 1.0, 1.25, 1.0],
                        "distinct2": [1.0, 1.0, 1.0, 1.0, 0.5], "score": [0.0] * 5})
    assert gm.pick_sides(tab, 0.25, 0.5) == (2.0, -1.0)  # nll exactly at the budget, distinct-2 exactly at it
    assert gm.pick_sides(tab, 0.24, 0.51) == (None, None)
    with pytest.raises(ValueError) as e:
        gm.pick_sides(tab[tab.c != 0.0], 0.25, 0.5)
    assert str(e.value) == "the sweep has no c = 0 row; the fluency budget is measured against c = 0"


def test_matched_range_zero_and_small_shifts_do_not_exclude_zero():
    """A side whose paired shift is exactly 0 (CI [0, 0]), or whose CI reaches above 0, does not exclude 0;
    every output column is there, with the seeded bootstrap."""
    scores = {-1.0: [0.1, 0.2, 0.3], 0.0: [0.1, 0.2, 0.3], 1.0: [0.1, 0.2, 0.3]}
    df = _rows(scores, invalid=())
    tab = gm.coeff_summary(df, n_boot=100)
    r = gm.matched_range(df, tab, 0.25, 0.9, n_boot=100, seed=5).iloc[0]
    assert (r["d_plus_lo"], r["d_plus_hi"], r["d_minus_lo"], r["d_minus_hi"]) == (0.0, 0.0, 0.0, 0.0)
    assert not r["plus_excludes0"] and not r["minus_excludes0"]
    assert r["range"] == 0.0 and (r["range_lo"], r["range_hi"]) == (0.0, 0.0)
    down = {**scores, -1.0: [-0.4, 0.0, 0.4]}  # a mean shift of -0.2 whose CI reaches above 0
    df2 = _rows(down, invalid=())
    r2 = gm.matched_range(df2, gm.coeff_summary(df2, n_boot=100), 0.25, 0.9, n_boot=100, seed=5).iloc[0]
    assert r2["d_minus"] == pytest.approx(-0.2) and 0 < r2["d_minus_hi"] < 1 and not r2["minus_excludes0"]
    d = np.array([-0.4, 0.0, 0.4]) - np.array([0.1, 0.2, 0.3])
    assert (r2["d_minus_lo"], r2["d_minus_hi"]) == pytest.approx(bootstrap_mean_ci(d, 100, 5))
    r_ = np.array([0.1, 0.2, 0.3]) - np.array([-0.4, 0.0, 0.4])
    assert (r2["range_lo"], r2["range_hi"]) == pytest.approx(bootstrap_mean_ci(r_, 100, 5))
    assert set(r.index) == {"method", "seed", "c_plus", "c_minus", "score0", "spearman", "d_plus", "d_plus_lo",
                            "d_plus_hi", "valid_plus", "d_minus", "d_minus_lo", "d_minus_hi", "valid_minus", "range",
                            "range_lo", "range_hi", "plus_excludes0", "minus_excludes0"}


def test_matched_range_without_a_side_has_nan_shifts():
    scores = {-1.0: [0.0, 0.1, 0.2], 0.0: [0.3, 0.4, 0.5], 1.0: [0.6, 0.8, 0.9]}
    df = _rows(scores, nll={-1.0: 5.0})  # c = -1 far over the NLL budget: no minus side
    r = gm.matched_range(df, gm.coeff_summary(df, n_boot=50), 0.25, 0.9, n_boot=50).iloc[0]
    assert r["c_plus"] == 1.0 and r["c_minus"] is None
    assert all(math.isnan(r[k]) for k in ("d_minus", "d_minus_lo", "d_minus_hi", "valid_minus"))
    # c+ against c = 0, each over its valid rows (prompt 1 is invalid on both sides and left out)
    assert r["range"] == pytest.approx(np.mean([0.6, 0.9]) - np.mean([0.3, 0.5]))
    assert r["valid_plus"] == pytest.approx(2 / 3) and not r["minus_excludes0"]


def _ranges(method: str, values: list[tuple[float, float | None, float | None, bool, bool]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": method, "seed": s, "range": rg, "d_plus": 0.1 * s, "d_minus": -0.1 * s,
                          "plus_excludes0": pe, "minus_excludes0": me, "valid_plus": 1.0 - 0.1 * s,
                          "valid_minus": 0.5, "spearman": 0.5 + 0.1 * s, "c_plus": cp, "c_minus": cm}
                         for s, (rg, cp, cm, pe, me) in enumerate(values)])


def test_method_summary_columns_order_and_seed_aggregates():
    ranges = pd.concat([
        _ranges("low", [(0.2, 1.0, -1.0, True, False)]),
        _ranges("high", [(0.5, 2.0, None, True, True), (0.7, float("nan"), -0.5, True, False),
                         (0.3, 1.5, -1.0, False, True)]),
    ])
    out = gm.method_summary(ranges)
    assert out["method"].tolist() == ["high", "low"] and out.index.tolist() == [0, 1]  # by range, descending
    assert list(out.columns) == ["method", "seeds", "range", "range_sd", "range_min", "range_max", "d_plus",
                                 "d_minus", "both_sides_excl0", "valid_plus", "valid_minus", "spearman", "c_plus",
                                 "c_minus"]
    high, low = out.iloc[0], out.iloc[1]
    assert high["seeds"] == 3 and high["range"] == pytest.approx(0.5)
    assert high["range_sd"] == pytest.approx(np.std([0.5, 0.7, 0.3], ddof=1))
    assert (high["range_min"], high["range_max"]) == (0.3, 0.7)
    assert high["d_plus"] == pytest.approx(0.1) and high["d_minus"] == pytest.approx(-0.1)
    assert high["both_sides_excl0"] == 1  # only the seed with both sides excluding 0
    assert high["valid_plus"] == pytest.approx(0.9) and high["valid_minus"] == 0.5
    assert high["spearman"] == pytest.approx(0.6)
    assert high["c_plus"] == "2,-,1.5" and high["c_minus"] == "-,-0.5,-1"  # None and NaN both print "-"
    assert math.isnan(low["range_sd"]) and low["seeds"] == 1 and low["c_plus"] == "1"
    two = gm.method_summary(_ranges("two", [(0.2, 1.0, -1.0, True, True), (0.4, 1.0, -1.0, False, False)]))
    assert two["range_sd"][0] == pytest.approx(np.std([0.2, 0.4], ddof=1))


def test_function_scorer_values_identity_and_messages(tmp_path, monkeypatch):
    import hashlib
    import inspect

    (tmp_path / "own_scorer.py").write_text("def letters(text):\n    return sum(ch.isalpha() for ch in text) / 10\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = gm.make_scorer("own_scorer:letters")
    assert scorer([" ab c!", "", "word"]).tolist() == pytest.approx([0.3, 0.0, 0.4])  # each text, as given
    assert scorer([]).shape == (0,)
    import own_scorer

    source = inspect.getsource(own_scorer.letters)
    assert scorer.identity == f"own_scorer:letters#{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    builtin = gm.make_scorer("builtins:len")  # no Python source: the identity hashes the empty string
    assert builtin.identity == f"builtins:len#{hashlib.sha256(b'').hexdigest()[:12]}"
    assert builtin(["abc", ""]).tolist() == [3.0, 0.0]
    # the module is everything before the first colon, the function everything after it
    with pytest.raises(ValueError) as e:
        gm.make_scorer("math:pi:x")
    msg = str(e.value)
    assert msg.startswith("--gen.scorer math:pi:x: cannot import 'pi:x' from module 'math' (") and msg.endswith(
        "); the module must be importable (e.g. run from its folder with PYTHONPATH=.)"), msg
    long = "x" * 60
    (tmp_path / "bad_scorer.py").write_text("def echo(text):\n    return text\n")
    with pytest.raises(ValueError) as e:
        gm.make_scorer("bad_scorer:echo")([long])
    assert str(e.value) == (f"--gen.scorer bad_scorer:echo returned {long!r} for {long[:40]!r}; it must return a "
                            "number")


def test_summaries_default_arguments():
    """coeff_summary and matched_range with their defaults equal the documented values given explicitly
    (1000 resamples, seed 0; NLL budget 0.25 nats, distinct-2 at least 0.9 of c = 0's)."""
    rng = np.random.default_rng(1)
    scores = {c: list(rng.normal(c, 0.5, 12)) for c in (-1.0, 0.0, 1.0, 2.0)}
    df = _rows(scores, nll={-1.0: 1.25, 1.0: 1.2, 2.0: 1.3}, d2={-1.0: 0.9, 1.0: 0.95, 2.0: 1.0})
    tab = gm.coeff_summary(df)
    pd.testing.assert_frame_equal(tab, gm.coeff_summary(df, n_boot=1000, seed=0))
    assert not tab.equals(gm.coeff_summary(df, n_boot=1000, seed=1))
    assert not tab.equals(gm.coeff_summary(df, n_boot=999, seed=0))
    r = gm.matched_range(df, tab)
    pd.testing.assert_frame_equal(r, gm.matched_range(df, tab, 0.25, 0.9, 1000, 0))
    assert (r["c_plus"][0], r["c_minus"][0]) == (1.0, -1.0)  # +2 over the NLL budget; -1 and +1 just inside
    for other in (dict(n_boot=999), dict(seed=1)):
        assert not r.equals(gm.matched_range(df, tab, 0.25, 0.9, **{"n_boot": 1000, "seed": 0, **other}))


def test_pick_sides_distinct_budget_is_relative_to_c0():
    tab = pd.DataFrame({"c": [-1.0, 0.0, 1.0], "nll": [1.0, 1.0, 1.0], "distinct2": [0.45, 0.5, 0.44],
                        "score": [0.0] * 3})
    assert gm.pick_sides(tab, 0.1, 0.9) == (None, -1.0)  # 0.9 * 0.5 = 0.45: -1 is in, +1 (0.44) is out


def test_matched_range_per_method_and_seed_in_order():
    """Two methods on the same seed and one on two seeds: each row reads only its own method's and seed's
    scores; rows come out sorted by (method, seed) whatever the order of `tab`; score0 is c = 0's mean; the
    shift CIs are the seeded paired bootstrap (12 prompts, so the seed matters)."""
    rng = np.random.default_rng(2)
    frames, want = [], {}
    for method, seed, shift in (("zeta", 0, 1.0), ("alpha", 0, -0.5), ("alpha", 1, 0.25)):
        base = rng.normal(0.0, 0.3, 12)
        up = base + shift + rng.normal(0.0, 0.3, 12)
        frames.append(_rows({0.0: list(base), 1.0: list(up)}, method, seed, invalid=()))
        want[(method, seed)] = (base, up)
    df = pd.concat(frames, ignore_index=True)
    tab = gm.coeff_summary(df, n_boot=200)
    out = gm.matched_range(df, tab.iloc[::-1], 10.0, 0.0, n_boot=200, seed=4)
    assert list(zip(out["method"], out["seed"], strict=True)) == [("alpha", 0), ("alpha", 1), ("zeta", 0)]
    for _, row in out.iterrows():
        base, up = want[(row["method"], row["seed"])]
        assert row["score0"] == pytest.approx(base.mean())
        assert row["d_plus"] == pytest.approx((up - base).mean())
        assert (row["d_plus_lo"], row["d_plus_hi"]) == pytest.approx(bootstrap_mean_ci(up - base, 200, 4))
        assert (row["d_plus_lo"], row["d_plus_hi"]) != bootstrap_mean_ci(up - base, 200, 0)
        assert (row["range_lo"], row["range_hi"]) == pytest.approx(bootstrap_mean_ci(up - base, 200, 4))  # c- is c = 0 here


def test_scorer_specs_defaults_are_the_sentiment_builtins():
    """With no argument: the built-in scorers of the sentiment concept, headline (VADER) first."""
    assert gm.scorer_specs() == ["vader", "textblob"] == list(gm.CONCEPT_SCORERS["sentiment"])
    assert gm.scorer_specs(scorers=("textblob",)) == ["textblob"]  # `scorer` left at its default: no clash


def test_gate_validity_edges():
    """The repetition gate is inclusive; a missing rep3 (NaN, or None from a JSON null) fails it unless the gate
    is off (max_rep3 = 1); a missing continuation is invalid; an empty frame gets an empty boolean column."""
    ok = "The sun rose over the quiet town and the market opened early."
    df = pd.DataFrame({"continuation": [ok, ok, ok, None], "rep3": [0.25, float("nan"), 0.0, 0.0]})
    assert gm.gate_validity(df, 0.25)["valid"].tolist() == [True, False, True, False]
    assert gm.gate_validity(df, 0.2)["valid"].tolist() == [False, False, True, False]
    assert gm.gate_validity(df, 1.0)["valid"].tolist() == [True, True, True, False]  # gate off
    nulls = pd.DataFrame({"continuation": [ok, ok], "rep3": [None, 0.1]}, dtype=object)
    assert gm.gate_validity(nulls, 0.2)["valid"].tolist() == [False, True]
    empty = gm.gate_validity(pd.DataFrame({"continuation": [], "rep3": []}), 0.2)
    assert empty["valid"].dtype == bool and len(empty) == 0


def test_textblob_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "textblob", None)  # the import fails
    with pytest.raises(ImportError) as e:
        gm.TextBlobScorer()
    assert str(e.value) == "the textblob scorer needs textblob: pip install textblob"


def test_scorer_specs_resolve_builtin_deduplicate_and_refuse():
    # `builtin` inside --gen.scorers is the concept's headline, once
    assert gm.scorer_specs("builtin", ("builtin", "textblob", "vader"), "sentiment") == ["vader", "textblob"]
    assert gm.scorer_specs("builtin", ("textblob", "builtin"), "sentiment") == ["textblob", "vader"]
    # a concept without built-in scorers: the make_scorer message naming the choices, for either way of asking
    for scorers in (None, ("builtin",)):
        with pytest.raises(gm.InputError) as e:
            gm.scorer_specs("builtin", scorers, "telepathy")
        assert str(e.value).startswith("no built-in generation scorer for concept 'telepathy' (built-in: "
                                       "['sentiment'])")
    with pytest.raises(gm.InputError) as e:
        gm.scorer_specs("vader", ("textblob", "vader"), "sentiment")
    assert str(e.value) == ("--gen.scorer vader and --gen.scorers textblob vader disagree on the headline scorer; "
                            "give only --gen.scorers (its first is the headline)")
