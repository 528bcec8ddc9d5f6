"""Output objectives (`train/outputs.py`): batch layout, completion log-probs against an independent
computation, and the sign conventions of every objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize

import innerpissa as ip
from innerpissa.train.forward import TrainForward
from innerpissa.train.outputs import (
    OutputConfig,
    OutputItem,
    collate_outputs,
    completion_logprob,
    margins,
    output_loss,
)

ITEMS = [OutputItem(0, [5, 6, 7, 8, 9], [11, 12, 13], [14, 15]),
         OutputItem(1, [5, 6, 7, 20], [21], [22, 23, 24, 25])]


def test_collate_puts_each_completion_at_its_rows_end():
    b = collate_outputs(ITEMS, pad_token_id=0)
    assert b.tail_len.tolist() == [3, 2, 1, 4]
    assert b.pair_index.tolist() == [0, 0, 1, 1]
    for row, (it, y) in enumerate([(ITEMS[0], ITEMS[0].y_pos), (ITEMS[0], ITEMS[0].y_neg),
                                   (ITEMS[1], ITEMS[1].y_pos), (ITEMS[1], ITEMS[1].y_neg)]):
        real = b.input_ids[row][b.attention_mask[row].bool()].tolist()
        assert real == it.x + y
        assert b.position_ids[row, -1] == len(real) - 1


def _by_hand(model, item_rows, c):
    """Mean log p(y | x) per token, each row alone, unpadded, from log_softmax of the model's logits."""
    out = []
    with torch.no_grad(), ip.steer(model, c):
        for x, y in item_rows:
            ids = torch.tensor([x + y])
            lp = F.log_softmax(model(input_ids=ids).logits.float()[0], -1)
            out.append(sum(float(lp[len(x) - 1 + k, t]) for k, t in enumerate(y)) / len(y))
    return torch.tensor(out)


@pytest.mark.parametrize("shared,frozen", [(True, True), (False, False), (True, False), (False, True)])
def test_completion_logprob_equals_an_independent_forward(tiny, shared, frozen):
    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4, layers=(1,)))
    randomize(ip.adapter_parameters(model), std=0.3)
    b = collate_outputs(ITEMS, pad_token_id=0)
    with torch.no_grad():
        got = completion_logprob(TrainForward(model, b, shared, frozen).run((1.0, -1.0)), b.tail_len.repeat(2))
    rows = [(it.x, y) for it in ITEMS for y in (it.y_pos, it.y_neg)]
    want = torch.cat([_by_hand(model, rows, 1.0), _by_hand(model, rows, -1.0)])
    assert torch.allclose(got, want, atol=1e-5)


def _l(pos, neg):
    return torch.tensor([pos, neg], requires_grad=True)


@pytest.mark.parametrize("kind", ["pref", "dpo", "sft"])
def test_each_objective_prefers_the_positive_completion_at_plus_one_and_the_negative_at_minus_one(kind):
    cfg = OutputConfig(beta=2.0)
    for c, favoured in ((1.0, 0), (-1.0, 1)):
        lc = _l(-2.0, -2.0)
        loss, terms = output_loss(kind, cfg, {c: lc}, torch.tensor([-2.0, -2.0]))
        loss.backward()
        # gradient descent raises the favoured completion's log-prob and never raises the other's more
        assert lc.grad[favoured] < 0
        assert lc.grad[favoured] < lc.grad[1 - favoured]
        assert set(terms) >= {f"{kind}{c:+g}", f"margin{c:+g}", "total"}


def test_pref_is_simpo_form_and_dpo_subtracts_the_reference():
    lc, l0 = torch.tensor([-1.0, -3.0]), torch.tensor([-0.5, -3.5])
    pref, _ = output_loss("pref", OutputConfig(beta=2.0, margin=0.5), {1.0: lc}, None)
    assert math.isclose(float(pref), -math.log(1 / (1 + math.exp(-(2.0 * 2.0 - 0.5)))), rel_tol=1e-6)
    dpo, _ = output_loss("dpo", OutputConfig(beta=2.0), {-1.0: lc}, l0)
    gap = (-1.0 + 0.5) - (-3.0 + 3.5)  # (l+ - l0+) - (l- - l0-) = -1
    assert math.isclose(float(dpo), -math.log(1 / (1 + math.exp(-(-2.0 * gap)))), rel_tol=1e-6)


def test_nll_anchor_adds_the_chosen_completions_nll():
    lc = torch.tensor([-1.0, -3.0, -2.0, -4.0])
    base, _ = output_loss("pref", OutputConfig(), {-1.0: lc}, None)
    anchored, terms = output_loss("pref", OutputConfig(w_nll=0.5), {-1.0: lc}, None)
    assert math.isclose(float(anchored - base), 0.5 * 3.5, rel_tol=1e-6)  # chosen at c = -1: y- rows (3, 4)
    assert math.isclose(float(terms["nll-1"]), 3.5, rel_tol=1e-6)


def test_bad_objective_settings_are_refused():
    with pytest.raises(ValueError, match="needs the base model"):
        output_loss("dpo", OutputConfig(), {1.0: torch.zeros(2)}, None)
    with pytest.raises(ValueError, match="c != 0"):
        output_loss("pref", OutputConfig(), {0.0: torch.zeros(2)}, None)


def test_margins_count_pairs_ordered_on_both_sides():
    by_c = {-1.0: torch.tensor([-1.0, -0.5, -1.0, -2.0]), 0.0: torch.tensor([-1.0, -1.0, -1.0, -1.0]),
         1.0: torch.tensor([-0.5, -1.0, -1.0, -0.5])}
    m = margins(by_c)
    # pair 0: -0.5 < 0 < 0.5 ordered; pair 1: 1.0 < 0 false
    assert m["ordered"] == 0.5
    assert math.isclose(m["margin+1"], (0.5 - 0.5) / 2)


# ------------------------------------------------------------------------------------------ in the trainer


def _run_cfg(tmp_path, name, objective="pref", method="innerpissa", epochs=3):
    from innerpissa.train.config import preset

    cfg = preset("tiny")
    cfg.objective, cfg.method, cfg.epochs = objective, method, epochs
    cfg.outputs.n_new_tokens, cfg.lr, cfg.calibrate = 6, 3e-2, False
    cfg.out = tmp_path / name
    return cfg


def _train_margins(trainer):
    """m(c) = l_c(y+) - l_c(y-) per training item at c = -1, 0, +1, computed by `_by_hand` (no library path)."""
    out = trainer.outputs
    rows = [(out.items[i].x, y) for i in out.train_idx for y in (out.items[i].y_pos, out.items[i].y_neg)]
    return {c: (lambda v: v[0::2] - v[1::2])(_by_hand(trainer.model, rows, c)) for c in (-1.0, 0.0, 1.0)}


@pytest.fixture(scope="module")
def pref_run(tmp_path_factory):
    from innerpissa.train.trainer import Trainer

    cfg = _run_cfg(tmp_path_factory.mktemp("pref"), "run")
    trainer = Trainer(cfg)
    result = trainer.fit()
    return cfg, trainer, result


def test_pref_run_orders_the_margins_it_trains_on(pref_run):
    cfg, trainer, result = pref_run
    m = _train_margins(trainer)
    # what the objective asks for, measured independently: +1 prefers y+ more than c = 0 does, -1 less
    assert float(m[1.0].mean()) > float(m[0.0].mean()) > float(m[-1.0].mean())
    s = result.summary
    assert s["objective"] == "pref" and s["train_items"] + s["items_dropped_empty"] == s["train_pairs"]
    assert {"val_margin-1", "val_margin+0", "val_margin+1", "val_ordered"} <= set(s["final_validation"])
    texts = __import__("json").loads((cfg.out / "completions.json").read_text())
    assert len(texts) == s["train_pairs"] + s["val_pairs"] and {"positive", "negative", "suffix"} <= set(texts[0])


def test_an_inverted_preference_fails_the_margin_check(tmp_path, monkeypatch):
    """The check above can fail: with the preference's sign planted inverted the trained margins order the
    other way."""
    import innerpissa.train.outputs as outputs
    from innerpissa.train.trainer import Trainer

    real = outputs.output_loss
    monkeypatch.setattr(outputs, "output_loss", lambda kind, cfg, l_c, l_0: real(kind, cfg, {-c: v for c, v in
                                                                                               l_c.items()}, l_0))
    trainer = Trainer(_run_cfg(tmp_path, "inverted"))
    trainer.fit()
    m = _train_margins(trainer)
    assert not (float(m[1.0].mean()) > float(m[0.0].mean()) > float(m[-1.0].mean()))


def test_output_objective_resumes_from_its_checkpoint_without_regenerating(tmp_path, monkeypatch):
    import innerpissa.train.outputs as outputs
    from innerpissa.train.trainer import Trainer, train

    full = _run_cfg(tmp_path, "full", epochs=2)
    train(full)
    cut = _run_cfg(tmp_path, "cut", epochs=2)
    calls = {"n": 0}
    original = Trainer.losses

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 4 and torch.is_grad_enabled():
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "losses", flaky)
    with pytest.raises(KeyboardInterrupt, match="resume"):
        train(cut)
    monkeypatch.setattr(Trainer, "losses", original)
    monkeypatch.setattr(outputs, "generate_ids", lambda *a, **k: pytest.fail("resume regenerated completions"))
    cut.resume = True
    train(cut)
    from safetensors.torch import load_file

    a, c = load_file(full.out / "adapter" / "adapter.safetensors"), load_file(cut.out / "adapter" / "adapter.safetensors")
    for k in a:
        torch.testing.assert_close(c[k], a[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("objective,method", [("dpo", "lora"), ("sft", "vector")])
def test_every_objective_trains_every_kind(tmp_path, objective, method):
    from innerpissa.train.trainer import train

    r = train(_run_cfg(tmp_path, f"{objective}-{method}", objective, method, epochs=1))
    assert r.summary["method"] == method and r.summary["objective"] == objective
    assert math.isfinite(r.summary["final_validation"]["val_total"])


def test_pairs_without_a_suffix_are_refused_for_output_objectives(tmp_path):
    from innerpissa.errors import InnerPissaError
    from innerpissa.train.trainer import train

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(f'{{"positive": "be kind {i} now", "negative": "be cruel {i} now"}}\n' for i in range(12)))
    cfg = _run_cfg(tmp_path, "nosuffix")
    cfg.data.pairs_file = pairs
    with pytest.raises((ValueError, InnerPissaError), match="personas x suffixes"):
        train(cfg)


def test_distill_teacher_is_the_mean_difference_baseline(tiny):
    from innerpissa.baselines.vectors import train_vectors
    from innerpissa.data.batching import PairCollator, PairDataset
    from innerpissa.data.config import make_pairs
    from innerpissa.train.config import preset
    from innerpissa.train.outputs import mean_difference

    model, tok = tiny
    cfg = preset("tiny")
    pairs, _ = make_pairs(cfg.data, 0, tok)
    ds = PairDataset(pairs, tok)
    batches = [PairCollator(tok.pad_token_id)([ds[i] for i in range(k, min(k + 4, len(ds)))])
               for k in range(0, len(ds), 4)]
    ours = mean_difference(model, batches, 2)
    theirs = train_vectors(model, tok, pairs, "mean_diff", n_tokens=2)
    assert len(ours) == len(theirs.vectors)
    for layer, v in theirs.vectors.items():
        name = next(n for n in ours if n.endswith(f".{layer}"))
        torch.testing.assert_close(ours[name], v.float(), atol=1e-5, rtol=1e-4)


def test_distill_run_carries_part_of_the_vectors_effect(tmp_path):
    from innerpissa.train.trainer import Trainer

    cfg = _run_cfg(tmp_path, "distill", objective="distill", epochs=4)
    t = Trainer(cfg)
    t._setup_reference()
    batch = t.outputs.batches(t.outputs.train_idx[:4])[0]
    with torch.no_grad():
        before = float(t.outputs.losses(batch)[0])
    t.fit()
    with torch.no_grad():
        after = float(t.outputs.losses(batch)[0])
    assert before == pytest.approx(1.0, abs=0.05)  # an untrained adapter carries none of the vector's effect
    assert after < 0.9 * before


def test_persona_words_are_what_the_two_prompts_differ_in():
    from innerpissa.train.outputs import persona_words

    assert persona_words("Pretend you're a cheerful person. The sky", "Pretend you're a gloomy person. The sky") == \
        ("cheerful", "gloomy")
    assert persona_words("You're an optimistic one", "You're a pessimistic one") == ("an optimistic", "a pessimistic")


def test_filters_drop_looping_and_persona_naming_completions(tiny):
    from innerpissa.data.pairs import ContrastivePair
    from innerpissa.train.outputs import make_items

    _, tok = tiny
    pairs = [ContrastivePair(f"Pretend you're a hopeful person.{s}", f"Pretend you're a hopeless person.{s}", s)
             for s in (" A", " B", " C")]
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    texts = [("The bright morning sun rose over calm fields.", "Grey rain fell on the quiet empty street."),
             ("The bright morning sun rose over calm fields.", "no no no no no no no no no no no no no no"),
             ("I am a hopeful person and it shows today.", "Grey rain fell on the quiet empty street.")]
    comp = {"pos": [enc(a) for a, _ in texts], "neg": [enc(b) for _, b in texts]}
    keep = lambda **kw: [it is not None for it in make_items(tok, pairs, comp, None, "Hi.", **kw)]  # noqa: E731
    assert keep() == [True, True, True]
    assert keep(drop_loops=True) == [True, False, True]
    assert keep(drop_persona=True) == [True, True, False]
    assert keep(drop_loops=True, drop_persona=True) == [True, False, False]


def test_guided_completions_reduce_to_greedy_and_follow_the_contrast(tiny):
    from innerpissa.eval.generation import generate_ids
    from innerpissa.train.outputs import guided_ids

    model, tok = tiny
    own = [tok("the sky is", add_special_tokens=False)["input_ids"], tok("a long story about", add_special_tokens=False)["input_ids"]]
    other = [tok("the sea was", add_special_tokens=False)["input_ids"], tok("no", add_special_tokens=False)["input_ids"]]
    greedy = generate_ids(model, tok, own, 6)
    assert guided_ids(model, tok, own, other, 6, 0.0) == greedy  # no guidance: plain greedy
    assert guided_ids(model, tok, own, own, 6, 3.0) == greedy  # against itself the contrast is zero
    # the first guided token is the argmax of the contrast, computed by hand
    with torch.no_grad():
        lp_own = F.log_softmax(model(input_ids=torch.tensor([own[0]])).logits[0, -1].float(), -1)
        lp_oth = F.log_softmax(model(input_ids=torch.tensor([other[0]])).logits[0, -1].float(), -1)
    first = guided_ids(model, tok, own[:1], other[:1], 1, 2.0)[0]
    assert first[:1] == [int((lp_own + 2.0 * (lp_own - lp_oth)).argmax())][:len(first)]


def test_distill_leaves_out_each_rows_attention_sink():
    from innerpissa.train.outputs import past_sink

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert past_sink(mask).int().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]]
    assert mask.tolist()[0] == [0, 0, 1, 1, 1]  # the caller's mask is not changed
