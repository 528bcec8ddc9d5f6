"""Issue 17 A, a fair match: strengths chosen on dev at a fluency budget (interpolated to the crossing, the grid
extended until each side leaves the budget), validity with a repetition gate, a second scorer, per-word
attribution, the instruction baseline, `kind:variant` rows, and the dev -> test protocol end to end on the
tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from innerpissa.errors import InputError
from innerpissa.eval import gen_metrics as gm
from innerpissa.eval import matching as mt
from innerpissa.eval.stats import paired_mean_ci, paired_nanmean_diff_ci

pytestmark = pytest.mark.usefixtures("one_thread")


def _tab(nll: dict, distinct: dict | None = None, valid: dict | None = None) -> pd.DataFrame:
    """A one-method `conditions` frame from per-c means."""
    cs = sorted(nll)
    return pd.DataFrame({"method": "m", "seed": 0, "c": cs, "n": 10, "nll": [nll[c] for c in cs],
                         "distinct2": [(distinct or {}).get(c, 0.9) for c in cs], "rep3": 0.0,
                         "valid": [(valid or {}).get(c, 1.0) for c in cs]})


# ---------------------------------------------------------------------------------------------- the choice


def test_interpolation_picks_exactly_the_budget_crossing():
    nll = {-2.0: 2.6, -1.0: 1.5, -0.5: 1.125, 0.0: 1.0, 0.5: 1.075, 1.0: 1.3, 1.5: 1.2, 2.0: 2.2}
    tab = _tab(nll)
    for b in (0.1, 0.25, 0.5):
        for sign in (1.0, -1.0):
            ch = mt.choose_side(tab, sign, b, digits=None)
            # independent: the dev NLL as a piecewise-linear function of c on this side, walked from c = 0
            side = sorted((c for c in nll if c * sign >= 0), key=abs)
            first_out = next(c for c in side if nll[c] > 1.0 + b)
            seg = [c for c in side if abs(c) <= abs(first_out)]
            xs, ys = np.abs(seg), np.array([nll[c] for c in seg])
            # the NLL at c* read off the interpolant is the budget, and c* lies in the crossing segment
            assert ch.how == "nll" and ch.dev_cost == b
            assert np.interp(abs(ch.c), xs, ys) == pytest.approx(1.0 + b, abs=1e-12)
            assert abs(seg[-2]) <= abs(ch.c) < abs(first_out) and np.sign(ch.c) == sign
    # by hand: +0.25 crosses between (0.5, 1.075) and (1, 1.3): 0.5 + 0.175 / 0.225 * 0.5
    assert mt.choose_side(tab, 1.0, 0.25, digits=None).c == pytest.approx(0.5 + 0.175 / 0.225 * 0.5)
    # the walk stops at the first point out: c = 1.5 is back inside the 0.25 budget but never chosen
    assert mt.choose_side(tab, 1.0, 0.25).c < 1.0
    # rounding keeps 4 significant digits
    assert mt.choose_side(tab, 1.0, 0.25).c == pytest.approx(0.8889)
    # the first grid point already out: interpolated from c = 0 itself
    assert mt.choose_side(tab, -1.0, 0.1, digits=None).c == pytest.approx(-0.5 * 0.1 / 0.125)


def test_binding_distinct_or_valid_constraint_takes_the_last_point_in():
    nll = {-1.0: 1.2, -0.5: 1.05, 0.0: 1.0, 0.5: 1.05, 1.0: 1.1, 2.0: 1.6}
    d = {0.0: 1.0, 0.5: 0.95, 1.0: 0.5, -0.5: 0.95, -1.0: 0.95}   # +1 loops: distinct-2 at 50 % of c = 0's
    v = {0.0: 0.95, -1.0: 0.5, -0.5: 0.92}                         # -1: half the rows invalid
    tab = _tab(nll, d, v)
    plus = mt.choose_side(tab, 1.0, 0.5, distinct_frac=0.9, min_valid=0.9)
    assert (plus.c, plus.how, plus.dev_cost) == (0.5, "distinct-2", pytest.approx(0.05))
    minus = mt.choose_side(tab, -1.0, 0.5, distinct_frac=0.9, min_valid=0.9)
    assert (minus.c, minus.how) == (-0.5, "valid")
    # NLL and validity both leave at the same point: the other constraint binds, no interpolation
    both = mt.choose_side(tab, -1.0, 0.1, distinct_frac=0.9, min_valid=0.9)
    assert (both.c, both.how) == (-0.5, "valid")
    # the valid threshold is c = 0's own fraction when that is lower: with min_valid 0.99 and c = 0 at 0.9,
    # 0.92 passes and 0.5 does not
    low0 = _tab(nll, d, {0.0: 0.9, -1.0: 0.5, -0.5: 0.92})
    assert mt.choose_side(low0, -1.0, 0.5, 0.9, min_valid=0.99) == mt.Choice(-0.5, "valid", pytest.approx(0.05))
    # a side that never leaves keeps its largest point
    assert mt.choose_side(_tab({0.0: 1.0, 1.0: 1.01, 2.0: 1.02}), 1.0, 0.25) == mt.Choice(2.0, "grid end",
                                                                                          pytest.approx(0.02))
    # fixed states: the one point, flagged over the budgets it exceeds
    fixed = _tab({-1.0: 1.05, 0.0: 1.0, 1.0: 1.3})
    ch = mt.choose(fixed, (0.1, 0.25, 0.5), fixed=True).set_index(["budget", "side"])
    assert (ch["c"].abs() == 1.0).all() and ch["how"].str.startswith("fixed").all()
    assert ch.loc[(0.25, "+"), "over"] and not ch.loc[(0.5, "+"), "over"] and not ch.loc[(0.1, "-"), "over"]
    assert ch.loc[(0.25, "+"), "how"] == "fixed over: nll" and ch.loc[(0.5, "+"), "how"] == "fixed"
    assert ch.loc[(0.25, "+"), "dev_cost"] == pytest.approx(0.3)


def _fake_scorer(nll_of, distinct_of=lambda c: 0.9, n_prompts: int = 3):
    """A stand-in for `task.score`: rows whose NLL is nll_of(c) at every prompt; records every call."""
    calls = []

    def score(coeffs):
        calls.append(list(coeffs))
        return pd.DataFrame([{"method": "m", "seed": 0, "c": float(c), "prompt_idx": i, "nll": nll_of(c),
                              "distinct2": distinct_of(c), "rep3": 0.0, "valid": True,
                              "score:vader": float(np.tanh(c))}
                             for c in coeffs for i in range(n_prompts)])

    return score, calls


def test_grid_extension_pushes_each_side_out_of_the_largest_budget_and_stops():
    # a weak direction (a random vector): NLL 1 + 0.01 c^2 leaves 0.5 nats only past |c| = 7.07
    score, calls = _fake_scorer(lambda c: 1.0 + 0.01 * c * c)
    dev = mt.dev_sweep(score, (-2.0, -1.0, 1.0, 2.0), (0.1, 0.25, 0.5), extend=5, refine=2)
    assert calls[1:] == [[-4.0, -3.0, 3.0, 4.0], [-8.0, -6.0, 6.0, 8.0]]  # 1.5x, 2x until 8 leaves, then stop
    tab = mt.conditions(dev)
    ch = mt.choose(tab, (0.1, 0.25, 0.5), digits=None).set_index(["budget", "side"])
    assert 6.0 < ch.loc[(0.5, "+"), "c"] < 8.0 and ch.loc[(0.5, "+"), "how"] == "nll"
    assert ch.loc[(0.5, "+"), "c"] == pytest.approx(6 + (1.5 - 1.36) / (1.64 - 1.36) * 2)  # = 7
    assert ch.loc[(0.1, "-"), "c"] == pytest.approx(-(3 + (1.1 - 1.09) / (1.16 - 1.09)))  # between -3 and -4
    # a direction that never costs anything: extended to 2**extend times the grid, then stops there
    score, calls = _fake_scorer(lambda c: 1.0)
    dev = mt.dev_sweep(score, (-1.0, 1.0), (0.25,), extend=3, refine=0)
    assert max(dev["c"]) == 8.0 and min(dev["c"]) == -8.0 and len(calls) == 4
    assert mt.choose_side(mt.conditions(dev), 1.0, 0.25).how == "grid end"
    # a steep one: while the first point is out of the smallest budget the sweep halves it, `refine` times at most
    # (0.25 -> 0.125 still out -> 0.0625 in)
    for refine, added, n_calls in ((1, [-0.125, 0.125], 2), (2, [-0.125, -0.0625, 0.0625, 0.125], 3)):
        score, calls = _fake_scorer(lambda c: 1.0 + 10 * c * c)
        dev = mt.dev_sweep(score, (-0.5, -0.25, 0.25, 0.5), (0.1, 0.25), extend=2, refine=refine)
        assert sorted(set(dev["c"]) - {-0.5, -0.25, 0.0, 0.25, 0.5}) == added and len(calls) == n_calls
    # fixed states: scored once, never extended
    score, calls = _fake_scorer(lambda c: 1.0)
    mt.dev_sweep(score, (-1.0, 1.0), (0.25,), fixed=True)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------- validity


LOOP = ("The concert was a rare and unexpected occurrence. It was a concert in a small hall, a small hall, and it "
        "was a small hall. It was a small hall, a small hall, and")


def test_repetition_gate_and_invalid_rows_excluded_from_means_and_counted():
    ok = "The sun rose over the quiet town and the market opened early."
    assert gm.is_valid(LOOP) and gm.repeated_ngram_fraction(LOOP) > 0.3  # distinct-2 alone lets it through
    df = pd.DataFrame({"continuation": [ok, LOOP, "Yes.", ""], "rep3": [gm.repeated_ngram_fraction(t) for t in
                                                                         (ok, LOOP, "Yes.", "")]})
    assert gm.gate_validity(df, 0.2)["valid"].tolist() == [True, False, False, False]
    assert gm.gate_validity(df, 0.5)["valid"].tolist() == [True, True, False, False]
    # one condition: the invalid rows' scores leave the mean, their NLL and distinct-2 stay, and they are counted
    rows = pd.DataFrame({"method": "m", "seed": 0, "c": 0.0, "prompt_idx": range(4),
                         "nll": [1.0, 2.0, 3.0, 4.0], "distinct2": [1.0, 0.5, 1.0, 0.2], "rep3": 0.0,
                         "valid": [True, False, True, False], "score:vader": [0.2, 0.99, 0.4, 0.99]})
    tab = mt.conditions(rows).iloc[0]
    assert tab["score:vader"] == pytest.approx(0.3) and tab["nll"] == pytest.approx(2.5)
    assert tab["distinct2"] == pytest.approx(0.675) and tab["valid"] == 0.5
    summ = gm.coeff_summary(rows.rename(columns={"score:vader": "score"}), n_boot=20).iloc[0]
    assert summ["score"] == pytest.approx(0.3) and summ["valid"] == 0.5
    # the paired difference of means over valid rows, and without NaNs exactly the paired mean and its CI
    a = pd.Series([0.5, np.nan, 0.7, 0.1], index=range(4))
    b = pd.Series([0.1, 0.2, np.nan, 0.0], index=range(4))
    d, lo, hi = paired_nanmean_diff_ci(a, b, n_boot=500, seed=1)
    assert d == pytest.approx(np.mean([0.5, 0.7, 0.1]) - np.mean([0.1, 0.2, 0.0])) and lo <= d <= hi
    x = pd.Series(np.random.default_rng(0).normal(size=20))
    y = pd.Series(np.random.default_rng(1).normal(size=20))
    np.testing.assert_allclose(paired_nanmean_diff_ci(x, y, 300, 3), paired_mean_ci(x, y, 300, 3), atol=1e-12)


def _test_frame(texts: dict[float, list[str]], valid: dict[float, list[bool]] | None = None, method: str = "m",
                nll: dict[float, float] | None = None) -> pd.DataFrame:
    rows = []
    for c, ts in texts.items():
        for i, t in enumerate(ts):
            rows.append({"method": method, "seed": 0, "c": c, "prompt_idx": i, "continuation": t,
                         "nll": (nll or {}).get(c, 1.0), "distinct2": 0.9, "rep3": 0.0,
                         "valid": (valid or {}).get(c, [True] * len(ts))[i]})
    return pd.DataFrame(rows)


def test_matched_results_use_valid_rows_and_report_the_realised_test_cost():
    scorer = gm.make_scorer("vader")
    texts = {0.0: ["The bus leaves at nine.", "A table stands in the room.", "It rained on the road."],
             0.5: ["What a wonderful happy bus ride.", "A lovely table stands here.", "happy happy happy joy"],
             -0.4: ["The bus is a sad and awful wreck.", "A broken table, terrible.", "It rained, a gloomy road."]}
    df = _test_frame(texts, {0.5: [True, True, False]}, nll={0.0: 1.0, 0.5: 1.2, -0.4: 1.4})
    df["score:vader"] = scorer(df["continuation"].tolist())
    choices = pd.DataFrame([{"method": "m", "seed": 0, "budget": 0.25, "side": "+", "c": 0.5, "how": "nll",
                             "dev_cost": 0.25, "over": False},
                            {"method": "m", "seed": 0, "budget": 0.25, "side": "-", "c": -0.4, "how": "nll",
                             "dev_cost": 0.25, "over": False}])
    r = mt.matched_results(df, choices, n_boot=200).iloc[0]
    s = {c: scorer(t) for c, t in texts.items()}
    assert r["d_plus"] == pytest.approx(s[0.5][:2].mean() - s[0.0].mean())  # the looping 3rd row is left out
    assert r["range"] == pytest.approx(s[0.5][:2].mean() - s[-0.4].mean())
    assert r["valid_plus"] == pytest.approx(2 / 3) and r["valid_minus"] == 1.0
    assert r["cost_plus"] == pytest.approx(0.2) and r["cost_minus"] == pytest.approx(0.4)  # realised, not 0.25
    with pytest.raises(ValueError, match="was not scored on test"):
        mt.matched_results(df[df["c"] != 0.5], choices)


def test_textblob_is_a_second_lexicon_offline():
    tb = gm.make_scorer("textblob")
    s = tb(["What a wonderful, happy day!", "The bus leaves at nine.", "A terrible, sad, awful day."])
    assert s[0] > 0.5 and s[1] == 0.0 and s[2] < -0.5 and tb.name == "textblob_polarity"
    assert gm.scorer_specs("builtin", None, "sentiment") == ["vader", "textblob"]
    assert gm.scorer_specs("builtin", ("textblob", "vader"), "sentiment") == ["textblob", "vader"]
    assert gm.scorer_specs("my:fn", None, "sentiment") == ["my:fn"]
    with pytest.raises(InputError, match="disagree on the headline"):
        gm.scorer_specs("vader", ("textblob",), "sentiment")


# ------------------------------------------------------------------------------------------- attribution


def test_word_attribution_sums_match_a_hand_count():
    lex = {"happy": 2.0, "sad": -2.0, "vibrant": 3.0, "dull": -1.0}
    at_c = ["A happy, vibrant town.", "Vibrant vibrant streets!", "A sad day."]
    at_0 = ["A dull town.", "Quiet streets.", "A sad, sad day."]
    ws = mt.word_shift(at_c, at_0, lex).set_index("word")
    # hand count: happy +1 (x2), vibrant +3 (x3), dull -1 (x-1), sad 1 - 2 = -1 (x-2)
    assert ws["delta_count"].to_dict() == {"dull": -1, "happy": 1, "sad": -1, "vibrant": 3}
    assert ws["contribution"].to_dict() == {"dull": 1.0, "happy": 2.0, "sad": 2.0, "vibrant": 9.0}
    assert mt.lexicon_tokens("Vibrant, :) happy!") == ["vibrant", ":)", "happy"]
    # through the frames: paired prompts valid at both, summed over prompts; shares of the side's total
    texts = {0.0: at_0 + ["A happy day."], 1.0: at_c + ["An awful loop loop."], -1.0: at_0 + ["x"]}
    df = _test_frame(texts, {1.0: [True, True, True, False]})
    choices = pd.DataFrame([{"method": "m", "seed": 0, "budget": 0.25, "side": s, "c": c, "how": "nll",
                             "dev_cost": 0.25, "over": False} for s, c in (("+", 1.0), ("-", -1.0))])
    attr = mt.word_attribution(df, choices, 0.25, lex)
    plus = attr[attr["side"] == "+"].set_index("word")
    assert plus["contribution"].sum() == 14.0 and (plus["n_prompts"] == 3).all()  # the invalid 4th row is out
    top = mt.top_words(attr, k=2)
    tp = top[top["side"] == "+"]
    assert tp["word"].tolist() == ["vibrant", "happy"] or tp["word"].tolist() == ["vibrant", "sad"]
    assert tp["share"].iloc[0] == pytest.approx(9 / 14)
    # the - side's net shift is -2 (happy -1 x 2); shares are of its push toward negative: happy 100 %
    tm = top[top["side"] == "-"]
    assert tm["word"].tolist() == ["happy"] and tm["share"].iloc[0] == 1.0 and tm["side_total"].iloc[0] == -2.0
    # cancellation: a + side whose words push both ways; shares of the positive push only
    mixed = mt.top_words(pd.DataFrame({"method": "m", "seed": 0, "side": "+", "c": 1.0, "n_prompts": 2,
                                       "word": ["good", "great", "bad"], "delta_count": [2, 1, 1],
                                       "valence": [2.0, 3.0, -2.5], "contribution": [4.0, 3.0, -2.5]}))
    assert mixed["word"].tolist() == ["good", "great"] and mixed["share"].tolist() == pytest.approx([4 / 7, 3 / 7])
    assert mixed["side_total"].iloc[0] == pytest.approx(4.5) and mixed["side_push"].iloc[0] == 7.0
    # the range without each side's top word: rescored by a counting scorer after deleting it
    count_happy = lambda ts: np.array([t.lower().count("vibrant") + t.lower().count("happy") for t in ts], float)  # noqa: E731
    wo = mt.range_without(df, choices, 0.25, {"m": ["vibrant"]}, {"count": count_happy}).iloc[0]
    # + side without "vibrant": happy counts 1, 0, 0 (4th invalid); - side (c=-1, all valid): 0, 0, 0, 0
    assert wo["range_without"] == pytest.approx(1 / 3 - 0.0) and wo["removed"] == "vibrant"
    assert mt.remove_words("Vibrant, vibrant streets; a vibrantly lit day.", ["vibrant"]) == \
        ", streets; a vibrantly lit day."


def test_matched_report_sorts_flags_and_attributes(tmp_path):
    """The report from synthetic frames: sorted by the 0.25-budget VADER range, a fixed state over budget
    flagged, the attribution section, both scorers, the two plots."""
    scorers = {"vader": gm.make_scorer("vader"), "textblob": gm.make_scorer("textblob")}
    zero = ["The bus leaves at nine.", "A table stands in the room.", "It rained on the road."]
    strong = {0.0: zero, 1.0: ["A wonderful, vibrant bus.", "A vibrant, lovely table.", "Vibrant happy road."],
              -1.0: ["A sad, awful bus.", "A terrible broken table.", "A gloomy, sad road."]}
    weak = {0.0: zero, 1.0: ["The bus leaves at nine, nice.", zero[1], zero[2]], -1.0: zero}
    frames = []
    for m, texts in (("weak", weak), ("strong", strong)):
        frames.append(_test_frame(texts, method=m, nll={0.0: 1.0, 1.0: 1.3, -1.0: 1.2}))
    test = pd.concat(frames, ignore_index=True)
    for name, s in scorers.items():
        test["score:" + name] = s(test["continuation"].tolist())
    choices = pd.DataFrame([{"method": m, "seed": 0, "budget": b, "side": s, "c": c, "how": "fixed" if m == "weak"
                             else "nll", "dev_cost": 0.3 if s == "+" else 0.2, "over": m == "weak" and b < 0.3}
                            for m in ("weak", "strong") for b in (0.25, 0.5) for s, c in (("+", 1.0), ("-", -1.0))])
    dev_tab = mt.conditions(test)
    matched = mt.matched_results(test, choices, dev_tab, n_boot=50)
    summary = mt.method_budget_summary(matched)
    attr = mt.word_attribution(test, choices, 0.25, mt.vader_lexicon())
    top = mt.top_words(attr)
    words = {m: g["word"].tolist() for m, g in top[top["rank"] == 1].groupby("method")}
    without = mt.range_without(test, choices, 0.25, words, scorers)
    from innerpissa.eval.report import write_matched_report

    paths, headline = write_matched_report(tmp_path, test, test, dev_tab, choices, matched, summary, {"model": "x"},
                                           list(scorers), [0.25, 0.5], 0.25, attr, top, without)
    text = paths["summary"].read_text()
    assert text.index("| strong") < text.index("| weak (over budget)")  # sorted by range, flag shown
    lex = mt.vader_lexicon()
    share = 3 * lex["vibrant"] / (3 * lex["vibrant"] + lex["wonderful"] + lex["lovely"] + lex["happy"])
    assert "scorer textblob" in text and "Which words carry the shift" in text and f"vibrant {share:.0%}" in text
    wo = pd.read_csv(paths["range_without"]).set_index(["method", "scorer"])
    assert wo.loc[("strong", "vader"), "removed"] == "vibrant, sad"  # each side's top word
    assert wo.loc[("weak", "vader"), "removed"] == "nice"
    assert paths["pareto"].stat().st_size > 0 and paths["dev_sweep"].stat().st_size > 0
    assert "Headline: budget 0.25 nats, scorer vader (headline)" in headline
    assert set(pd.read_csv(paths["matched"])["scorer"]) == {"vader", "textblob"}


# ------------------------------------------------------------------------------- baselines and variant rows


def test_instruction_prompting_texts_and_fixed_states():
    from innerpissa.baselines.registry import build_baseline
    from innerpissa.data.chat import DEFAULT_SYSTEM

    ins = build_baseline("instruction", None, None, [], builtin="sentiment")
    assert ins.name == "instruction" and ins.fixed_states and ins.default_coeffs == (-1.0, 0.0, 1.0)
    assert ins.system_prompt(1.0, DEFAULT_SYSTEM) == f"{DEFAULT_SYSTEM} Answer in a very cheerful tone."
    assert ins.system_prompt(-1.0, DEFAULT_SYSTEM) == f"{DEFAULT_SYSTEM} Answer in a very gloomy tone."
    assert ins.system_prompt(0.0, DEFAULT_SYSTEM) == DEFAULT_SYSTEM
    honest = build_baseline("instruction", None, None, [], builtin="honesty")
    assert honest.system_prompt(1.0, "") == "Answer as honestly as you can."
    assert honest.system_prompt(-1.0, "") == "Answer deceptively."
    persona = build_baseline("prompting", None, None, [], builtin="sentiment")
    assert persona.fingerprint() != ins.fingerprint() and persona.name == "prompting"
    assert "cheerful person" in persona.system_prompt(1.0, "")
    with pytest.raises(ValueError, match="only c in"):
        ins.system_prompt(0.5, "")


def test_method_variant_rows_parse_and_train_in_their_own_folder(tmp_path):
    from innerpissa.compare import Compare, compared_methods
    from innerpissa.methods import parse_method, trained_config, trained_kinds

    assert {"innerpissa", "lora"} <= set(trained_kinds())
    assert parse_method("innerpissa:r32") == ("innerpissa", "r32")
    assert parse_method("lora:shift") == ("lora", "shift") and parse_method("mean_diff") == ("mean_diff", None)
    with pytest.raises(InputError, match="only trained kinds take a variant"):
        parse_method("mean_diff:r32")
    with pytest.raises(InputError, match="unknown variant 'nope'"):
        parse_method("innerpissa:nope")
    cmp = Compare(out=tmp_path, preset="tiny", task="generation",
                  methods=("innerpissa", "innerpissa:r32", "lora:r32", "instruction"))
    assert compared_methods(cmp) == ("innerpissa", "innerpissa:r32", "lora:r32", "instruction")
    with pytest.raises(SystemExit, match="unknown variant"):
        compared_methods(Compare(out=tmp_path, methods=("innerpissa:bogus",)))
    with pytest.raises(SystemExit, match="unknown method"):
        compared_methods(Compare(out=tmp_path, task="generation", methods=("telepathy",)))
    cfg = trained_config(cmp, 1, "lora", "r32")
    assert cfg.method == "lora" and cfg.adapter.r == 32 and cfg.seed == 1
    assert cfg.out == tmp_path / "train" / "lora-r32_seed1"
    assert cfg.data == trained_config(cmp, 1, "innerpissa").data  # every row trains on the same pairs
    assert trained_config(cmp, 0, "innerpissa").out == tmp_path / "train" / "innerpissa_seed0"


# -------------------------------------------------------------------------------------- end to end (tiny)


def test_dev_test_protocol_end_to_end_on_tiny(tmp_path):
    """Chosen on dev, scored on test at exactly those c's; the choice never reads the test prompts (it does not
    change when they do); a `kind:variant` row trains in its own folder and is labelled so."""
    from innerpissa.compare import Compare, run_compare
    from innerpissa.eval.settings import CompareGen
    from innerpissa.train.config import preset

    dev_prompts = ["Describe a kitchen.", "Tell me about the bus.", "What is on the radio today?"]
    (tmp_path / "dev.txt").write_text("\n".join(dev_prompts) + "\n")
    tests = {"a": ["Tell me about your weekend.", "Describe a garden.", "What did you eat?"],
             "b": ["Describe a parking lot.", "Tell me about rain.", "What is a train?"]}
    for k, ps in tests.items():
        (tmp_path / f"test_{k}.txt").write_text("\n".join(ps) + "\n")
    train = preset("tiny")
    train.calibrate = False

    def run(which: str):
        gen = CompareGen(prompts_file=tmp_path / f"test_{which}.txt", dev_prompts_file=tmp_path / "dev.txt",
                         max_new_tokens=8, adapter_coeffs=(-1.0, 1.0), vector_coeffs=(-1.0, -0.5, 0.5, 1.0),
                         budgets=(0.05, 0.2), extend=4, refine=1, min_valid=0.0, distinct_frac=0.0)
        cmp = Compare(out=tmp_path / "out", preset="tiny", train=train, task="generation", concept="sentiment",
                      methods=("innerpissa:r32", "mean_diff", "instruction"), seeds=(0,), n_pairs=12, epochs=1,
                      n_boot=30, gen=gen)
        paths = run_compare(cmp)
        return (paths, pd.read_csv(paths["rows"]), pd.read_csv(paths["dev_rows"]),
                pd.read_csv(paths["choices"]))

    paths, test, dev, choices = run("a")
    assert set(test["method"]) == set(dev["method"]) == {"innerpissa:r32", "mean_diff", "instruction"}
    assert set(dev["prompt"]) == set(dev_prompts) and set(test["prompt"]) == set(tests["a"])
    assert (tmp_path / "out" / "train" / "innerpissa-r32_seed0" / "adapter").is_dir()
    for m, ch in choices.groupby("method"):
        # test scored at exactly {0} U the dev-chosen c's, each at every prompt
        assert set(test[test["method"] == m]["c"]) == set(ch["c"]) | {0.0}
        assert (test[test["method"] == m].groupby("c").size() == 3).all()
    # the choice agrees with the dev rows: an NLL-bound c* sits where the dev mean NLL crosses NLL(0) + b
    assert (choices["how"] == "nll").sum() >= 2
    for _, r in choices[choices["how"] == "nll"].iterrows():
        g = dev[dev["method"] == r["method"]].groupby("c")["nll"].mean()
        side = g[(g.index * np.sign(r["c"])) >= 0]
        xs = np.abs(side.index.to_numpy())
        order = np.argsort(xs)
        assert np.interp(abs(r["c"]), xs[order], side.to_numpy()[order]) == pytest.approx(
            g[0.0] + r["budget"], abs=2e-3 * max(1.0, abs(r["c"])))
    ins = choices[choices["method"] == "instruction"]
    assert set(ins["c"]) == {-1.0, 1.0} and ins["how"].str.startswith("fixed").all()
    summary = paths["summary"].read_text()
    assert "innerpissa:r32" in summary and "Budget 0.05 nats" in summary and paths["pareto"].exists()

    # other test prompts: the same choices (the dev sweep is cached, nothing about test enters the choice)
    _, test_b, dev_b, choices_b = run("b")
    pd.testing.assert_frame_equal(choices, choices_b)
    pd.testing.assert_frame_equal(dev.drop(columns=["train_seconds"]), dev_b.drop(columns=["train_seconds"]))
    assert set(test_b["prompt"]) == set(tests["b"])


def test_dev_test_protocol_refuses_a_prompts_file_without_dev_prompts(tmp_path):
    from innerpissa.compare import Compare, run_compare
    from innerpissa.eval.settings import CompareGen

    (tmp_path / "p.txt").write_text("Describe a kitchen.\n")
    with pytest.raises(InputError, match="--gen.dev-prompts-file"):
        run_compare(Compare(out=tmp_path / "x", preset="tiny", task="generation",
                            gen=CompareGen(prompts_file=tmp_path / "p.txt")))
    with pytest.raises(InputError, match="reports on test"):
        run_compare(Compare(out=tmp_path / "x", preset="tiny", task="generation", gen=CompareGen(split="dev")))
    with pytest.raises(InputError, match="--gen.budgets must be positive"):
        CompareGen(budgets=(0.25, -0.1)).check()
    assert math.isclose(CompareGen().budgets[1], 0.25)
