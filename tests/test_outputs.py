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
    ObjectiveConfig,
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
    cfg = ObjectiveConfig(kind=kind, beta=2.0)
    for c, favoured in ((1.0, 0), (-1.0, 1)):
        lc = _l(-2.0, -2.0)
        loss, terms = output_loss(cfg, {c: lc}, torch.tensor([-2.0, -2.0]))
        loss.backward()
        # gradient descent raises the favoured completion's log-prob and never raises the other's more
        assert lc.grad[favoured] < 0
        assert lc.grad[favoured] < lc.grad[1 - favoured]
        assert set(terms) >= {f"{kind}{c:+g}", f"margin{c:+g}", "total"}


def test_pref_is_simpo_form_and_dpo_subtracts_the_reference():
    lc, l0 = torch.tensor([-1.0, -3.0]), torch.tensor([-0.5, -3.5])
    pref, _ = output_loss(ObjectiveConfig(kind="pref", beta=2.0, margin=0.5), {1.0: lc}, None)
    assert math.isclose(float(pref), -math.log(1 / (1 + math.exp(-(2.0 * 2.0 - 0.5)))), rel_tol=1e-6)
    dpo, _ = output_loss(ObjectiveConfig(kind="dpo", beta=2.0), {-1.0: lc}, l0)
    gap = (-1.0 + 0.5) - (-3.0 + 3.5)  # (l+ - l0+) - (l- - l0-) = -1
    assert math.isclose(float(dpo), -math.log(1 / (1 + math.exp(-(-2.0 * gap)))), rel_tol=1e-6)


def test_nll_anchor_adds_the_chosen_completions_nll():
    lc = torch.tensor([-1.0, -3.0, -2.0, -4.0])
    base, _ = output_loss(ObjectiveConfig(kind="pref"), {-1.0: lc}, None)
    anchored, terms = output_loss(ObjectiveConfig(kind="pref", w_nll=0.5), {-1.0: lc}, None)
    assert math.isclose(float(anchored - base), 0.5 * 3.5, rel_tol=1e-6)  # chosen at c = -1: y- rows (3, 4)
    assert math.isclose(float(terms["nll-1"]), 3.5, rel_tol=1e-6)


def test_bad_objective_settings_are_refused():
    with pytest.raises(ValueError, match="needs the base model"):
        output_loss(ObjectiveConfig(kind="dpo"), {1.0: torch.zeros(2)}, None)
    with pytest.raises(ValueError, match="c != 0"):
        output_loss(ObjectiveConfig(kind="pref"), {0.0: torch.zeros(2)}, None)


def test_margins_count_pairs_ordered_on_both_sides():
    by_c = {-1.0: torch.tensor([-1.0, -0.5, -1.0, -2.0]), 0.0: torch.tensor([-1.0, -1.0, -1.0, -1.0]),
         1.0: torch.tensor([-0.5, -1.0, -1.0, -0.5])}
    m = margins(by_c)
    # pair 0: -0.5 < 0 < 0.5 ordered; pair 1: 1.0 < 0 false
    assert m["ordered"] == 0.5
    assert math.isclose(m["margin+1"], (0.5 - 0.5) / 2)
