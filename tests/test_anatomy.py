"""One rule for the decoder blocks and one for the decoder/head split."""

from __future__ import annotations

import pytest
from torch import nn

from innerpissa.anatomy import decoder_and_head, decoder_blocks


def test_blocks_of_the_tiny(tiny):
    model, _ = tiny
    name, n = decoder_blocks(model)
    assert name == "model.layers" and n == model.config.num_hidden_layers


def test_blocks_follow_the_config_not_the_longest_list(tiny):
    model, _ = tiny
    n = model.config.num_hidden_layers
    model.extra = nn.ModuleList(nn.Identity() for _ in range(n + 5))  # a longer list that is not the blocks
    try:
        assert decoder_blocks(model) == ("model.layers", n)
    finally:
        del model.extra


def test_blocks_without_a_config_use_the_longest_list():
    m = nn.Module()
    m.a, m.b = nn.ModuleList([nn.Identity()] * 2), nn.ModuleList([nn.Identity()] * 3)
    assert decoder_blocks(m) == ("b", 3)
    with pytest.raises(ValueError, match="not a supported decoder"):
        decoder_blocks(nn.Linear(2, 2))


def test_decoder_and_head(tiny):
    model, _ = tiny
    decoder, head = decoder_and_head(model)
    assert decoder is model.get_decoder() and head is model.get_output_embeddings()
    model.config.final_logit_softcapping = 30.0
    try:
        assert decoder_and_head(model, strict=False) is None
        with pytest.raises(ValueError, match="final_logit_softcapping"):
            decoder_and_head(model)
    finally:
        model.config.final_logit_softcapping = None
