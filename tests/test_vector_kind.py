"""The trained steering vector kind (`adapter/vector.py`): W x + c v on the adapter's modules, through the same
attach / steer / save / load paths as InnerPiSSA and LoRA(c)."""

from __future__ import annotations

import pytest
import torch
from helpers import logits, randomize

import innerpissa as ip
from innerpissa.adapter.kinds import KINDS, attach_kind
from innerpissa.adapter.vector import CoeffVectorLinear

CFG = ip.AdapterConfig(r=4, layers=(0, 1))


@pytest.fixture
def steered(tiny):
    model, tok = tiny
    batch = tok(["the sky is clear today", "a short one"], return_tensors="pt", padding=True)
    base = logits(model, batch)
    attach_kind(model, "vector", CFG)
    randomize(ip.adapter_parameters(model), std=0.5)
    return model, batch, base


def _by_hand(model, batch, cs):
    """Independent reference: hooks add c_i * v to each wrapped module's output (row i), no adapter code."""
    layers = ip.adapter_layers(model)
    vecs = {name: layer.vector.detach().clone() for name, layer in layers.items()}
    ip.detach_adapter(model)
    handles = []
    c = torch.as_tensor(cs, dtype=torch.float32).reshape(-1, 1, 1)
    for name, v in vecs.items():
        handles.append(model.get_submodule(name).register_forward_hook(lambda _m, _a, out, v=v: out + c * v))
    try:
        with torch.no_grad():
            return model(**batch).logits
    finally:
        for h in handles:
            h.remove()


def test_vector_is_zero_at_init_and_exact_at_c0(tiny):
    model, tok = tiny
    batch = tok(["the sky is clear today"], return_tensors="pt")
    base = logits(model, batch)
    attach_kind(model, "vector", CFG)
    assert all(isinstance(ly, CoeffVectorLinear) for ly in ip.adapter_layers(model).values())
    assert torch.equal(logits(model, batch, 1.0), base)  # v = 0: every c is the base model
    randomize(ip.adapter_parameters(model), std=0.5)
    assert torch.equal(logits(model, batch, 0.0), base)
    assert (logits(model, batch, 1.0) - base).abs().max() > 1e-2


@pytest.mark.parametrize("c", [1.0, -0.5, 2.0])
def test_vector_adds_c_times_v_at_every_position(steered, c):
    model, batch, _ = steered
    got = logits(model, batch, c)
    want = _by_hand(model, batch, [c, c])
    assert torch.allclose(got, want, atol=1e-5)


def test_per_row_coefficients_match_single_rows(steered):
    model, batch, _ = steered
    got = logits(model, batch, torch.tensor([1.0, -1.0]))
    want = _by_hand(model, batch, [1.0, -1.0])
    assert torch.allclose(got, want, atol=1e-5)


def test_flip_sign_swaps_c_and_minus_c(steered):
    model, batch, _ = steered
    plus = logits(model, batch, 1.0)
    ip.flip_sign(model)
    assert torch.allclose(logits(model, batch, -1.0), plus, atol=1e-6)


def test_save_load_round_trip_is_exact(steered, tmp_path):
    model, batch, _ = steered
    want = logits(model, batch, 0.7)
    ip.save_adapter(model, tmp_path / "vec")
    fresh, _ = ip.load_model("tiny-random")
    ip.load_adapter(fresh, tmp_path / "vec")
    assert all(isinstance(ly, CoeffVectorLinear) for ly in ip.adapter_layers(fresh).values())
    assert torch.equal(logits(fresh, batch, 0.7), want)


def test_merge_and_lora_export_refuse_before_touching_weights(steered, tmp_path):
    model, batch, base = steered
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(TypeError, match="not a weight change"):
        ip.merge_adapter(model, 1.0)
    with pytest.raises(TypeError, match="not a weight change"):
        ip.detach_adapter(model, merge_at=1.0)
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n]), n
    with pytest.raises((TypeError, ValueError)):
        ip.export_lora(model, tmp_path / "lora", c=1.0)
    assert not (tmp_path / "lora").exists()


def test_every_kind_attaches_the_same_modules(tiny):
    model, _ = tiny
    names = {}
    for kind in KINDS:
        attach_kind(model, kind, CFG)
        names[kind] = sorted(ip.adapter_layers(model))
        ip.detach_adapter(model)
    assert names["vector"] == names["innerpissa"] == names["lora"]
    with pytest.raises(ValueError, match="unknown adapter kind"):
        attach_kind(model, "bias", CFG)
