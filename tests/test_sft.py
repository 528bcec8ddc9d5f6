"""The SFT upper reference: trains on its own persona-conditioned answers, c = 0 is the base, +-1 differ."""

from __future__ import annotations

import pytest
import torch

from innerpissa.adapter import AdapterConfig
from innerpissa.baselines.sft import SFTSteerer, build_sft, sft_examples
from innerpissa.data.pairs import build_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_sft_steerer_end_to_end(tiny):
    model, tok = tiny
    pairs = build_pairs(tok, [("an honest", "a dishonest")], ["The weather today is", "I think that"],
                        system="You are a helpful assistant.")
    batch = tok(["the sky is clear today"], return_tensors="pt")
    base = _logits(model, batch)
    steerer, info = build_sft(model, tok, pairs, AdapterConfig(r=4), max_new_tokens=6, epochs=3, lr=1e-2)
    assert isinstance(steerer, SFTSteerer)
    assert info["loss_plus"][-1] < info["loss_plus"][0] and info["loss_minus"][-1] < info["loss_minus"][0]
    with steerer.at(0.0):
        assert torch.equal(_logits(model, batch), base)
    with steerer.at(1.0):
        plus = _logits(model, batch)
    with steerer.at(-1.0):
        minus = _logits(model, batch)
    assert (plus - base).abs().max() > 1e-4 and (minus - plus).abs().max() > 1e-4
    assert torch.equal(_logits(model, batch), base), "state leaked out of the context"
    # the training prompt has no persona in it: only the suffix and a neutral request
    ids, n_prompt = sft_examples(tok, pairs[:1], ["a completion"], "You are a helpful assistant.")[0]
    prompt = tok.decode(ids[:n_prompt])
    assert "honest" not in prompt and "The weather today is" in prompt
