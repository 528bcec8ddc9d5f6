"""Generation evaluation: pure metrics on hand-made texts, the batched sweep against per-coefficient
generation on the tiny model, the continuation NLL against an independent computation, the held-out prompts,
the sentiment concept, and `compare --task generation` end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from innerpissa.eval import gen_metrics as gm
from innerpissa.eval import stats

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ metrics


def test_distinct_and_repetition_on_hand_made_texts():
    # words the cat the cat the cat: 5 bigrams, 2 distinct; 4 trigrams, 2 distinct
    assert gm.distinct_n("The cat the cat the cat", 2) == pytest.approx(2 / 5)
    assert gm.repeated_ngram_fraction("The cat the cat the cat", 3) == pytest.approx(0.5)
    assert gm.distinct_n("a b c d e", 2) == 1.0 and gm.repeated_ngram_fraction("a b c d e") == 0.0
    assert gm.distinct_n("Hello, world.", 2) == 1.0  # punctuation marks are units: hello , world .
    assert math.isnan(gm.distinct_n("", 2)) and math.isnan(gm.distinct_n("word", 2))
    assert gm.is_valid("The sun rose over the quiet town.")
    assert not gm.is_valid("Yes.")  # too short
    assert not gm.is_valid("no no no no no no no no no no")  # a loop


def test_vader_scorer_orders_hand_made_sentiment():
    s = gm.make_scorer("builtin", "sentiment")(["What a wonderful, happy day, I love it!", "The bus leaves at nine.",
                                                 "This is terrible, sad and hopeless."])
    assert s[0] > 0.5 and s[2] < -0.5 and abs(s[1]) < 0.2
    assert gm.make_scorer("vader").name == gm.make_scorer("builtin", "sentiment").name == "vader_compound"
    with pytest.raises(ValueError, match="no built-in generation scorer for concept 'telepathy'"):
        gm.make_scorer("builtin", "telepathy")
    with pytest.raises(ValueError, match="unknown --gen.scorer 'bogus'"):
        gm.make_scorer("bogus")
    with pytest.raises(ValueError, match="cannot import 'nope' from module 'math'"):
        gm.make_scorer("math:nope")


def test_bootstrap_and_spearman_against_independent_values():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 200)
    lo, hi = stats.bootstrap_mean_ci(x, 2000, 0)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    c, y = [-2, -1, 0, 1, 2, 3], [0.1, 0.3, 0.2, 0.5, 0.9, 0.9]
    assert stats.spearman(c, y) == pytest.approx(spearmanr(c, y).statistic)
    assert math.isnan(stats.spearman([0, 1], [1, 1]))
    assert math.isnan(stats.spearman([0, 1], [1, 2], min_points=3)) and stats.spearman([0, 1], [1, 2]) == pytest.approx(1.0)
    assert stats.spearman([0, 1, 2, np.nan], [3, 2, 1, 0]) == pytest.approx(-1.0)  # non-finite pairs dropped
    assert all(math.isnan(v) for v in stats.bootstrap_mean_ci([np.nan]))  # nothing left to resample


def _frame(scores: dict[float, list[float]], nll: dict[float, float], d2: dict[float, float]) -> pd.DataFrame:
    rows = []
    for c, ss in scores.items():
        for i, s in enumerate(ss):
            rows.append({"method": "m", "seed": 0, "c": c, "prompt_idx": i, "score": s, "nll": nll[c],
                         "distinct2": d2[c], "rep3": 0.0, "valid": True})
    return pd.DataFrame(rows)


def test_matched_range_picks_sides_by_fluency_only_and_matches_hand_computation():
    scores = {-2.0: [-0.9, -0.8, -1.0], -1.0: [-0.5, -0.2, -0.3], 0.0: [0.1, 0.0, 0.2],
              1.0: [0.6, 0.4, 0.5], 2.0: [0.9, 0.95, 1.0]}
    nll = {-2.0: 1.5, -1.0: 1.1, 0.0: 1.0, 1.0: 1.2, 2.0: 1.2}
    d2 = {-2.0: 0.95, -1.0: 0.95, 0.0: 1.0, 1.0: 0.95, 2.0: 0.5}  # c = +2 loops, c = -2 is too costly
    df = _frame(scores, nll, d2)
    tab = gm.coeff_summary(df, n_boot=200)
    assert gm.pick_sides(tab, 0.25, 0.9) == (1.0, -1.0)
    assert gm.pick_sides(tab, 1.0, 0.4) == (2.0, -2.0)
    r = gm.matched_range(df, tab, 0.25, 0.9, n_boot=200).iloc[0]
    assert r["range"] == pytest.approx(np.mean(scores[1.0]) - np.mean(scores[-1.0]))
    assert r["d_plus"] == pytest.approx(np.mean(scores[1.0]) - np.mean(scores[0.0]))
    assert r["d_minus"] == pytest.approx(np.mean(scores[-1.0]) - np.mean(scores[0.0]))
    assert r["plus_excludes0"] and r["minus_excludes0"] and r["spearman"] == pytest.approx(1.0)
    # no side within budget: the range is taken against c = 0 itself, i.e. 0
    none = gm.matched_range(df, tab, 0.01, 0.99, n_boot=50).iloc[0]
    assert none["c_plus"] is None and none["range"] == 0.0
    summ = gm.method_summary(pd.concat([gm.matched_range(df, tab, 0.25, 0.9, n_boot=50).assign(seed=s)
                                        for s in range(3)]))
    assert summ.iloc[0]["seeds"] == 3 and summ.iloc[0]["both_sides_excl0"] == 3


# ------------------------------------------------------------------------------------------------ plumbing


def _random_adapter(model):
    from innerpissa.adapter import attach
    from innerpissa.adapter.config import AdapterConfig

    attach(model, AdapterConfig(r=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


PROMPTS = ["The weather today is", "Tell me about the sea and a long trip to the coast.", "Hi"]


def test_batched_sweep_equals_per_coefficient_generation(tiny):
    from innerpissa.adapter import detach_adapter
    from innerpissa.baselines.prompting import PersonaPrompting
    from innerpissa.baselines.vectors import SteeringVectors, VectorSteerer
    from innerpissa.eval.generation import generate_sweep, supports_per_row
    from innerpissa.steering import AdapterSteerer

    model, tok = tiny
    _random_adapter(model)
    d = model.config.hidden_size
    vec = VectorSteerer(model, SteeringVectors({1: torch.randn(d, generator=torch.Generator().manual_seed(1))},
                                               "mean_diff"))
    vec.flip_sign()  # the per-row path must respect the calibrated sign
    for steerer, coeffs in ((AdapterSteerer(model), [-1.0, 0.0, 1.0]), (vec, [-2.0, 0.0, 3.0]),
                            (PersonaPrompting(), [-1.0, 0.0, 1.0])):
        assert supports_per_row(steerer)
        one = generate_sweep(model, tok, PROMPTS, steerer, coeffs, max_new_tokens=8)
        assert len(one) == len(PROMPTS) * len(coeffs)
        for c in coeffs:  # each coefficient on its own, through the steerer's ordinary `at(c)`
            alone = generate_sweep(model, tok, PROMPTS, steerer, [c], max_new_tokens=8, batched=False)
            assert one[one.c == c]["ids"].tolist() == alone["ids"].tolist(), (steerer.name, c)
        by_c = {c: one[one.c == c]["ids"].tolist() for c in coeffs}
        assert by_c[coeffs[0]] != by_c[0.0] or by_c[coeffs[-1]] != by_c[0.0], f"{steerer.name} steers nothing"
    # chunked batches give the same tokens
    chunked = generate_sweep(model, tok, PROMPTS, AdapterSteerer(model), [-1.0, 1.0], max_new_tokens=8, max_batch=2)
    whole = generate_sweep(model, tok, PROMPTS, AdapterSteerer(model), [-1.0, 1.0], max_new_tokens=8)
    assert chunked["ids"].tolist() == whole["ids"].tolist()
    detach_adapter(model)


def test_decode_sweep_shares_header_and_lower_blocks_and_equals_generate(tiny):
    """The sweep decoder with a shared chat header and a frozen block 0 gives `generate`'s tokens per
    coefficient, including rows cut early by an end-of-sequence token."""
    from innerpissa.adapter import attach, detach_adapter, steer
    from innerpissa.adapter.config import AdapterConfig
    from innerpissa.data.chat import chat_ids
    from innerpissa.eval import decode
    from innerpissa.eval.generation import generate_ids
    from innerpissa.split import common_prefix_len, first_adapted_block

    model, tok = tiny
    attach(model, AdapterConfig(r=8, layers=[-1]))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    try:
        k = first_adapted_block(model)
        assert k == 1
        prompts = [chat_ids(tok, p) for p in PROMPTS]
        assert common_prefix_len(prompts) >= decode.MIN_HEADER
        coeffs = [-1.0, 0.0, 1.0]
        rows = [(p, c) for p in prompts for c in coeffs]
        want = {}
        for c in coeffs:
            with steer(model, c):
                for p, ids in zip(prompts, generate_ids(model, tok, prompts, 10), strict=True):
                    want[(tuple(p), c)] = ids
        at_rows = lambda c: steer(model, c)  # noqa: E731
        eos: set[int] = set()
        got = decode.decode_sweep(model, [r[0] for r in rows], [r[1] for r in rows], at_rows, k, 10, eos, 0)
        assert got == [want[(tuple(p), c)] for p, c in rows]
        assert len({tuple(x) for x in got}) > len(prompts)  # the coefficients changed something
        # an end-of-sequence token cuts a row where the uncut continuation first has it
        stop = got[0][3]
        cut = decode.decode_sweep(model, [r[0] for r in rows], [r[1] for r in rows], at_rows, k, 10, {stop}, 0)
        assert cut == [x[:x.index(stop)] if stop in x else x for x in got]
        # nothing shared (block 0 steered) gives the same tokens
        assert decode.decode_sweep(model, [r[0] for r in rows], [r[1] for r in rows], at_rows, 0, 10, eos, 0) == got
    finally:
        detach_adapter(model)


def test_continuation_nll_matches_an_unbatched_forward(tiny):
    from innerpissa.data.chat import chat_ids
    from innerpissa.eval.generation import continuation_nll

    model, tok = tiny
    g = torch.Generator().manual_seed(0)
    conts = [torch.randint(5, tok.vocab_size, (n,), generator=g).tolist() for n in (3, 7, 1, 0)]
    idx = [0, 1, 2, 0]
    got = continuation_nll(model, tok, PROMPTS, idx, conts, batch_size=3)
    assert math.isnan(got[3])
    for j in range(3):
        ctx = chat_ids(tok, PROMPTS[idx[j]])
        ids = torch.tensor([ctx + conts[j]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        want = -logp[len(ctx) - 1:-1].gather(-1, torch.tensor(conts[j])[:, None]).mean()
        assert got[j] == pytest.approx(float(want), abs=1e-4)


class _Letters:
    """A scorer that is not a model: letters / 10 (so the score column can be checked by hand)."""

    name = "letters"

    def __call__(self, texts):
        return np.array([sum(ch.isalpha() for ch in t) / 10 for t in texts], dtype=float)


@torch.no_grad()
def _hand_nll(model, tok, system: str, prompt: str, cont: list[int]) -> float:
    """Mean NLL of `cont` after the chat prompt, from the model's logits of the whole row (written out here)."""
    text = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": prompt}],
                                   add_generation_prompt=True, tokenize=False)
    ctx = tok(str(text), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return -sum(float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont)) / len(cont)


def test_evaluate_generation_columns_against_a_hand_computation(tiny):
    """Every column of `evaluate_generation`: the NLL is the continuation's under the UNSTEERED model (checked
    on the bare base model after detaching the adapter, and shown to differ from the steered NLL), the score is
    the scorer's, the text metrics are gen_metrics' of the decoded continuation."""
    from innerpissa.adapter import detach_adapter, steer
    from innerpissa.eval.generation import evaluate_generation
    from innerpissa.steering import AdapterSteerer

    model, tok = tiny
    _random_adapter(model)
    system = "You are a terse assistant."
    coeffs = [-1.0, 0.0, 1.0]
    df = evaluate_generation(model, tok, PROMPTS, AdapterSteerer(model), coeffs, _Letters(), max_new_tokens=6,
                             system=system, nll_batch=2)
    assert len(df) == len(PROMPTS) * len(coeffs)
    assert sorted(zip(df["c"], df["prompt_idx"], strict=True)) == sorted((c, i) for c in coeffs for i in range(3))
    assert df["n_new"].tolist() == [len(x) for x in df["ids"]] and (df["n_new"] > 0).sum() >= 6
    by_c = {c: df[df.c == c]["ids"].tolist() for c in coeffs}
    assert by_c[1.0] != by_c[0.0] or by_c[-1.0] != by_c[0.0], "the adapter steered nothing"
    steered = {}
    for _, row in df[df.n_new > 0].iterrows():
        with steer(model, float(row["c"])):
            steered[row.name] = _hand_nll(model, tok, system, PROMPTS[row["prompt_idx"]], list(row["ids"]))
    detach_adapter(model)  # the bare base model from here on
    moved = 0.0
    for _, row in df.iterrows():
        assert row["prompt"] == PROMPTS[row["prompt_idx"]]
        text = tok.decode(row["ids"], skip_special_tokens=True).strip()
        assert row["continuation"] == text
        assert row["score"] == pytest.approx(sum(ch.isalpha() for ch in text) / 10)
        d2, r3 = gm.distinct_n(text, 2), gm.repeated_ngram_fraction(text, 3)
        assert (row["distinct2"] == pytest.approx(d2)) if d2 == d2 else math.isnan(row["distinct2"])
        assert (row["rep3"] == pytest.approx(r3)) if r3 == r3 else math.isnan(row["rep3"])
        assert row["valid"] == gm.is_valid(text)
        if row["n_new"] == 0:
            assert math.isnan(row["nll"])
            continue
        want = _hand_nll(model, tok, system, PROMPTS[row["prompt_idx"]], list(row["ids"]))
        assert row["nll"] == pytest.approx(want, abs=1e-4), (row["c"], row["prompt_idx"])
        moved = max(moved, abs(steered[row.name] - want))
    assert moved > 1e-2, "steered and unsteered NLL agree: the check would not see a steered NLL"


def test_preallocated_cache_grows_past_its_room(tiny):
    """`split.preallocate` gives each cache layer room for `extra` tokens; writing more grows the buffer
    (`_Growing.update`) and the model's logits and the cached keys/values stay those of a plain cache."""
    import inspect

    from transformers import DynamicCache

    from innerpissa.split import _Growing, cache_layers, preallocate

    model, tok = tiny
    # transformers 5.25 renamed the forward's `past_key_values` to `cache`
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = torch.tensor([tok("The weather today is fine and the sea is calm, said the old sailor")["input_ids"]])
    n, p = ids.shape[1], 4
    assert n >= p + 1 + 3 + 2
    with torch.no_grad():
        full = model(input_ids=ids).logits
        grown, plain = DynamicCache(config=model.config), DynamicCache(config=model.config)
        for cache in (grown, plain):
            model(input_ids=ids[:, :p], use_cache=True, **{key: cache})
        preallocate(grown, 1)  # room for one more token only
        layer = cache_layers(grown)[0]
        assert isinstance(layer, _Growing) and layer._kb.shape[-2] == p + 1
        pos, outs, sizes = p, [], []
        for k in (1, 3, n - p - 4):  # fills the room, then overflows twice
            chunk = ids[:, pos:pos + k]
            outs.append(model(input_ids=chunk, use_cache=True, **{key: grown}).logits)
            model(input_ids=chunk, use_cache=True, **{key: plain})
            pos += k
            sizes.append(layer._kb.shape[-2])
    assert sizes[0] == p + 1 and sizes[1] > p + 1 and sizes[2] >= n  # the buffer grew
    torch.testing.assert_close(torch.cat(outs, 1), full[:, p:], atol=1e-5, rtol=1e-5)
    for g, q in zip(cache_layers(grown), cache_layers(plain), strict=True):
        assert g.keys.shape[-2] == n
        assert torch.equal(g.keys, q.keys) and torch.equal(g.values, q.values)


# ------------------------------------------------------------------------------------------------ data


def test_neutral_prompts_are_held_out_and_split():
    from innerpissa.data.builtin import builtin_sets, load_builtin
    from innerpissa.eval.generation import load_neutral_prompts

    dev, test = load_neutral_prompts("dev"), load_neutral_prompts("test")
    assert len(dev) >= 32 and len(test) >= 64
    assert len(set(dev) | set(test)) == len(dev) + len(test)
    assert load_neutral_prompts("all") == dev + test
    training_text = [s.lower() for name in builtin_sets() for s in load_builtin(name)["suffixes"]]
    for p in dev + test:
        low = p.lower().rstrip(".?!")
        assert not any(low in s or s in low for s in training_text), p
    with pytest.raises(ValueError, match="unknown prompt split"):
        load_neutral_prompts("train")


def test_sentiment_concept_builds_pairs_and_train_cli_alias(tiny):
    from innerpissa.data.builtin import builtin_sets, load_builtin
    from innerpissa.data.pairs import pairs_from_sources
    from innerpissa.train.cli import read_start

    assert "sentiment" in builtin_sets()
    data = load_builtin("sentiment")
    assert len(data["personas"]) >= 8 and ("a cheerful", "a gloomy") in data["personas"]
    _, tok = tiny
    pairs = pairs_from_sources(tok, builtin="sentiment")
    assert len(pairs) == len(data["personas"]) * len(data["suffixes"])
    positives = {p.positive for p in pairs}
    assert any("a cheerful person" in p for p in positives) and not any("gloomy" in p for p in positives)
    start, rest = read_start(["--lr", "1", "--concept", "sentiment", "--preset", "tiny"])
    assert (start.concept, rest) == ("sentiment", ["--lr", "1"])
    assert read_start(["--concept=sentiment"])[0].concept == "sentiment"
    cfg = start.config()
    assert cfg.data.builtin == "sentiment" and cfg.out is None  # default_out gives runs/sentiment-<timestamp>
    with pytest.raises(SystemExit, match="unknown concept"):
        read_start(["--concept", "telepathy"])[0].config()


def test_compare_generation_end_to_end_and_resume(tmp_path):
    from innerpissa.compare import Compare, run_compare
    from innerpissa.eval.settings import CompareGen

    cmp = Compare(out=tmp_path / "gen", preset="tiny", task="generation", concept="sentiment",
                  methods=("innerpissa", "prompting", "mean_diff"), seeds=(0,), n_pairs=12, epochs=1,
                  baseline_coeffs=(-2.0, 0.0, 2.0), n_boot=50,
                  gen=CompareGen(n_prompts=3, max_new_tokens=5, adapter_coeffs=(-1.0, 0.0, 1.0), nll_budget=100.0,
                                 distinct_frac=0.0, select="same-split"))  # the old rule (the default: test_matching)
    paths = run_compare(cmp)
    rows = pd.read_csv(tmp_path / "gen" / "rows.csv")
    assert set(rows["method"]) == {"innerpissa", "prompting", "mean_diff"}
    assert set(rows[rows.method == "innerpissa"]["c"]) == {-1.0, 0.0, 1.0}
    assert rows.groupby(["method", "c"]).size().eq(3).all()
    # c = 0 is the base model for every method: the same continuations
    zero = rows[rows.c == 0].pivot_table(index="prompt_idx", columns="method", values="continuation",
                                         aggfunc="first")
    assert (zero.nunique(axis=1) == 1).all()
    assert "innerpissa" in paths["summary"].read_text() and paths["plot"].exists()
    cached = sorted((tmp_path / "gen" / "cache").glob("*.json"))
    assert [f.name.split("_")[0] for f in cached] == ["base", "innerpissa", "mean", "prompting"]  # one per sweep
    stamps = [f.stat().st_mtime_ns for f in cached]
    again = pd.read_csv(run_compare(cmp)["summary"].parent / "rows.csv")
    pd.testing.assert_frame_equal(rows, again)
    assert [f.stat().st_mtime_ns for f in cached] == stamps  # nothing regenerated


def test_compare_dilemmas_rejects_other_concepts(tmp_path):
    from innerpissa.compare import Compare, run_compare

    with pytest.raises(ValueError, match="honesty only"):
        run_compare(Compare(out=tmp_path, concept="sentiment"))


def test_compare_generation_on_your_own_prompts_and_scorer(tmp_path, monkeypatch):
    """Item 6 of issue 19: a prompts file and a `module:function` scorer (text -> float), no module of ours."""
    from innerpissa.compare import Compare, run_compare
    from innerpissa.eval.settings import CompareGen

    prompts = ["Tell me about your weekend.", "Describe a kitchen.", "What is on the radio?"]
    (tmp_path / "my_prompts.txt").write_text("# my prompts\n" + "\n".join(prompts) + "\n\n")
    (tmp_path / "my_scorer.py").write_text("def letters(text):\n    return sum(ch.isalpha() for ch in text) / 10\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_dev.txt").write_text("Describe a street.\nWhat is in the fridge?\n")
    gen = CompareGen(prompts_file=tmp_path / "my_prompts.txt", dev_prompts_file=tmp_path / "my_dev.txt",
                     scorer="my_scorer:letters", max_new_tokens=4, adapter_coeffs=(-1.0, 0.0, 1.0), extend=1,
                     distinct_frac=0.0)
    cmp = Compare(out=tmp_path / "own", preset="tiny", task="generation", methods=("prompting", "mean_diff"),
                  seeds=(0,), n_pairs=12, baseline_coeffs=(-2.0, 0.0, 2.0), n_boot=20, gen=gen)
    paths = run_compare(cmp)
    rows = pd.read_csv(paths["rows"])
    assert sorted(rows["prompt"].unique()) == sorted(prompts)  # reported on the prompts file ...
    dev = pd.read_csv(paths["dev_rows"])
    assert sorted(dev["prompt"].unique()) == ["Describe a street.", "What is in the fridge?"]  # ... chosen on these
    for frame in (rows, dev):
        expected = frame["continuation"].fillna("").map(lambda t: sum(ch.isalpha() for ch in t) / 10)
        np.testing.assert_allclose(frame["score"], expected)  # the user's function scored every continuation
    summary = paths["summary"].read_text()
    assert "scorer: my_scorer:letters" in summary and "my_prompts.txt" in summary
    with pytest.raises(ValueError, match="--gen.prompts-file: .* is not a file"):
        run_compare(Compare(out=tmp_path / "x", preset="tiny", task="generation",
                            gen=CompareGen(prompts_file=tmp_path / "missing.txt")))
