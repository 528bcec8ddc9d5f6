"""Several named adapters on one model: independent coefficients, deltas that add, merge, export, save/load."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import logits, randomize
from torch import nn

import innerpissa as ip
from innerpissa.adapter import AdapterStack, InnerPiSSALinear

PROMPTS = ["the sky is clear today", "Honesty matters because people rely on it"]
# "honesty" adapts blocks 0 and 1, "sentiment" block 1 only with another rank: they overlap on block 1
CFG_H = ip.AdapterConfig(r=8, layers=(0, 1), rotate_u=True)
CFG_S = ip.AdapterConfig(r=4, layers=(1,), s_mode="mult", seed=1)


def _single(cfg, seed):
    """A fresh tiny model with one (default-named) adapter: the reference for composition."""
    model, _ = ip.load_model("tiny-random")
    ip.attach(model, cfg)
    randomize(ip.adapter_parameters(model), seed=seed)
    return model


@pytest.fixture
def two(tiny):
    model, tok = tiny
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    base = logits(model, batch)
    ip.attach(model, CFG_H, name="honesty")
    ip.attach(model, CFG_S, name="sentiment")
    randomize(ip.adapter_parameters(model, "honesty"), seed=1)
    randomize(ip.adapter_parameters(model, "sentiment"), seed=2)
    return model, tok, batch, base


def test_names_and_shared_modules(two):
    model = two[0]
    assert ip.adapter_names(model) == ["honesty", "sentiment"]
    h, s = ip.adapter_layers(model, "honesty"), ip.adapter_layers(model, "sentiment")
    assert len(h) == 4 and len(s) == 2 and set(s) < set(h)
    stack = model.get_submodule(next(iter(s)))
    assert isinstance(stack, AdapterStack) and list(stack.adapters) == ["honesty", "sentiment"]
    assert stack.adapters["honesty"].base_layer is stack.base_layer is stack.adapters["sentiment"].base_layer
    # the base weight is stored once, and every base parameter is frozen
    keys = [k for k in model.state_dict() if k.endswith("o_proj.base_layer.weight")]
    assert len(keys) == 2
    assert all(not p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)
    assert all(p.requires_grad for p in ip.adapter_parameters(model))


def test_all_zero_is_base_exactly(two):
    model, _, batch, base = two
    assert torch.equal(logits(model, batch), base)
    assert torch.equal(logits(model, batch, {"honesty": 0.0, "sentiment": 0.0}), base)
    assert torch.equal(logits(model, batch, {}), base)
    assert (logits(model, batch, {"honesty": 1.0, "sentiment": -1.0}) - base).abs().max() > 1e-3


@pytest.mark.parametrize("which", ["honesty", "sentiment"])
def test_each_adapter_alone_equals_single_adapter_model(two, which):
    model, tok, batch, _ = two
    cfg, seed = (CFG_H, 1) if which == "honesty" else (CFG_S, 2)
    single = _single(cfg, seed)
    for c in (1.0, -0.5):
        assert torch.equal(logits(model, batch, {which: c}), logits(single, batch, c))
    c = torch.tensor([1.0, -1.0])
    assert torch.equal(logits(model, batch, {which: c}), logits(single, batch, c))


def test_deltas_add_on_a_shared_layer():
    """An AdapterStack with two components computes W x + Delta_1(c_1) x + Delta_2(c_2) x (dense reference)."""
    torch.manual_seed(0)
    lin = nn.Linear(12, 10).double()
    stack = AdapterStack(lin)
    stack.add("a", InnerPiSSALinear(lin, ip.AdapterConfig(r=4, rotate_u=True, dtype="float64"), seed=3))
    stack.add("b", InnerPiSSALinear(lin, ip.AdapterConfig(r=3, s_mode="add_tanh", dtype="float64"), seed=4))
    randomize(stack.parameters(), std=0.2)
    x = torch.randn(5, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(stack(x), lin(x))
        stack.adapters["a"].coeff, stack.adapters["b"].coeff = 0.7, -1.2
        dw = stack.adapters["a"].delta_weight(0.7) + stack.adapters["b"].delta_weight(-1.2)
        torch.testing.assert_close(stack(x), x @ (lin.weight + dw).T + lin.bias, atol=1e-10, rtol=0)


def test_steer_combination_per_example_and_restore(two):
    model, tok, _, _ = two
    enc = tok([PROMPTS[0], PROMPTS[1], PROMPTS[1]], return_tensors="pt", padding=True)
    ch, cs = torch.tensor([1.0, -1.0, 0.0]), torch.tensor([-0.5, 0.0, 1.0])
    mixed = logits(model, enc, {"honesty": ch, "sentiment": cs})
    for i in range(3):
        one = {k: v[i:i + 1] for k, v in enc.items()}
        ref = logits(model, one, {"honesty": ch[i].item(), "sentiment": cs[i].item()})
        torch.testing.assert_close(mixed[i:i + 1], ref, atol=2e-5, rtol=1e-4)
    # a tensor for one adapter, a float for the other
    part = logits(model, enc, {"honesty": ch, "sentiment": 0.3})
    ref = logits(model, {k: v[:1] for k, v in enc.items()}, {"honesty": 1.0, "sentiment": 0.3})
    torch.testing.assert_close(part[:1], ref, atol=2e-5, rtol=1e-4)
    layers = ip.adapter_layers(model, "sentiment")
    with ip.steer(model, {"sentiment": 0.5}):
        with ip.steer(model, {"honesty": 1.0}):  # an inner context sets unnamed adapters to 0
            assert all(layer.coeff == 0.0 for layer in layers.values())
        assert all(layer.coeff == 0.5 for layer in layers.values())
    assert all(layer.coeff == 0.0 for layer in layers.values())


def test_merged_combination_equals_unmerged_and_unmerge_restores(two):
    model, _, batch, base = two
    coeffs = {"honesty": 1.0, "sentiment": -0.5}
    weights = {n: layer.base_layer.weight.clone() for n, layer in ip.adapter_layers(model, "honesty").items()}
    steered = logits(model, batch, coeffs)
    dw = ip.delta_weights(model, coeffs)
    ip.merge_adapter(model, coeffs)
    assert (logits(model, batch) - steered).abs().max() <= 1e-4
    for n, w in weights.items():  # the merged weight is W + Delta_h + Delta_s where they overlap
        torch.testing.assert_close(model.get_submodule(n).base_layer.weight, w + dw[n], atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="unmerge"):
        with ip.steer(model, {"sentiment": 1.0}):
            pass
    ip.unmerge_adapter(model)
    for n, w in weights.items():
        torch.testing.assert_close(model.get_submodule(n).base_layer.weight, w, atol=1e-6, rtol=0)
    assert (logits(model, batch) - base).abs().max() <= 1e-5


def test_exported_combination_loads_in_peft(two, tmp_path):
    from peft import PeftModel

    model, _, batch, _ = two
    coeffs = {"honesty": 0.8, "sentiment": -0.5}
    steered = logits(model, batch, coeffs)
    ip.export_lora(model, tmp_path / "lora", coeffs)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    info = json.loads((tmp_path / "lora" / "innerpissa_export.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 12  # 8 + 4 where they overlap
    assert sorted(cfg["rank_pattern"].values()) == [8, 8] and cfg["alpha_pattern"] == cfg["rank_pattern"]
    assert info["coefficients"] == coeffs and sorted(info["module_ranks"].values()) == [8, 8, 12, 12]
    fresh, _ = ip.load_model("tiny-random")
    peft_model = PeftModel.from_pretrained(fresh, str(tmp_path / "lora"))
    assert (logits(peft_model, batch) - steered).abs().max() <= 1e-4
    # one adapter of the two, by name: the others are left out
    ip.export_lora(model, tmp_path / "h", {"honesty": 0.8})
    assert json.loads((tmp_path / "h" / "adapter_config.json").read_text())["r"] == 8
    with pytest.raises(ValueError, match="every coefficient"):
        ip.export_lora(model, tmp_path / "z", {"honesty": 0.0})


def test_save_and_load_by_name(two, tmp_path):
    model, _, batch, _ = two
    ip.save_adapter(model, tmp_path / "h", name="honesty")
    ip.save_adapter(model, tmp_path / "s", name="sentiment")
    assert ip.read_adapter_meta(tmp_path / "s")["config"]["r"] == 4
    fresh, _ = ip.load_model("tiny-random")
    ip.load_adapter(fresh, tmp_path / "s", name="sentiment")
    ip.load_adapter(fresh, tmp_path / "h", name="honesty")
    assert sorted(ip.adapter_names(fresh)) == ["honesty", "sentiment"]
    for coeffs in ({"honesty": 1.0, "sentiment": -0.5}, {"sentiment": 1.0}, {"honesty": -1.0}):
        assert torch.equal(logits(fresh, batch, coeffs), logits(model, batch, coeffs))
    # a named adapter saved alone loads as the default adapter of the one-adapter API
    plain, _ = ip.load_model("tiny-random")
    ip.load_adapter(plain, tmp_path / "h")
    assert torch.equal(logits(plain, batch, 0.7), logits(model, batch, {"honesty": 0.7}))


def test_detach_one_keeps_the_other(two):
    model, _, batch, base = two
    before = logits(model, batch, {"sentiment": 0.9})
    steered_h = logits(model, batch, {"honesty": 1.0})
    ip.detach_adapter(model, name="honesty")
    assert ip.adapter_names(model) == ["sentiment"]
    assert isinstance(model.model.layers[0].self_attn.o_proj, nn.Linear)  # only honesty wrapped block 0
    assert torch.equal(logits(model, batch, 0.9), before)  # one adapter left: a plain float works again
    ip.attach(model, CFG_H, name="honesty")  # the name is free again; the new adapter starts from its init
    assert (logits(model, batch, {"honesty": 1.0}) - steered_h).abs().max() > 1e-3
    ip.merge_adapter(model, {"honesty": 1.0})
    ip.detach_adapter(model, merge_at={"sentiment": 0.9})  # honesty is not named: it is unmerged, not baked in
    assert not ip.adapter_names(model) and isinstance(model.model.layers[1].mlp.down_proj, nn.Linear)
    assert (logits(model, batch) - before).abs().max() <= 1e-4
    assert (logits(model, batch) - base).abs().max() > 1e-3


def test_lora_baseline_composes_with_innerpissa(tiny, tmp_path):
    from peft import PeftModel

    from innerpissa.adapter.lora import attach_lora

    model, tok = tiny
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    base = logits(model, batch)
    attach_lora(model, CFG_S)
    ip.attach(model, CFG_H, name="honesty")
    randomize(ip.adapter_parameters(model), std=0.2)
    assert ip.adapter_names(model) == ["default", "honesty"]
    assert torch.equal(logits(model, batch, {"default": 0.0}), base)
    coeffs = {"default": -0.7, "honesty": 0.6}
    steered = logits(model, batch, coeffs)
    ip.export_lora(model, tmp_path / "lora", coeffs)
    peft_model = PeftModel.from_pretrained(ip.load_model("tiny-random")[0], str(tmp_path / "lora"))
    assert (logits(peft_model, batch) - steered).abs().max() <= 1e-4


def test_adapter_steerer_fixes_the_others(two):
    model, _, batch, _ = two
    steerer = ip.AdapterSteerer(model, adapter="honesty", others={"sentiment": -0.5})
    with torch.no_grad(), steerer.at(1.0):
        got = model(**batch).logits
    assert torch.equal(got, logits(model, batch, {"honesty": 1.0, "sentiment": -0.5}))


def test_adapter_steerer_flips_only_its_adapter(two):
    model, _, batch, _ = two
    before = logits(model, batch, {"honesty": -1.0, "sentiment": 0.5})
    ip.AdapterSteerer(model, adapter="honesty").flip_sign()
    after = logits(model, batch, {"honesty": 1.0, "sentiment": 0.5})
    assert torch.allclose(after, before, atol=1e-5)  # honesty at +1 is the old -1; sentiment untouched


def test_errors_name_the_adapters(two, tmp_path):
    model = two[0]
    with pytest.raises(ValueError, match=r"several adapters \['honesty', 'sentiment'\]"):
        with ip.steer(model, 1.0):
            pass
    with pytest.raises(ValueError, match=r"no adapter named 'honesti'.*\['honesty', 'sentiment'\]"):
        with ip.steer(model, {"honesti": 1.0}):
            pass
    with pytest.raises(ValueError, match="no adapter named 'x'"):
        ip.adapter_layers(model, "x")
    with pytest.raises(ValueError, match="no adapter named 'x'"):
        ip.detach_adapter(model, name="x")
    with pytest.raises(ValueError, match="several adapters"):
        ip.save_adapter(model, tmp_path / "a")
    with pytest.raises(ValueError, match="several adapters"):
        ip.merge_adapter(model, 1.0)
    with pytest.raises(ValueError, match="several adapters"):
        ip.flip_sign(model)
    with pytest.raises(ValueError, match="batch size"):
        with ip.steer(model, {"honesty": torch.ones(2), "sentiment": torch.ones(3)}):
            pass
    with pytest.raises(RuntimeError, match="already has an adapter named 'honesty'"):
        ip.attach(model, CFG_H, name="honesty")
    for bad in ("", "a.b", "keys", "training", "1x"):
        with pytest.raises(ValueError, match="invalid adapter name"):
            ip.attach(model, CFG_H, name=bad)
    ip.merge_adapter(model, {"honesty": 1.0})
    with pytest.raises(RuntimeError, match="unmerge"):
        ip.attach(model, CFG_S, name="third")


def test_bench_compose_on_saved_adapters(two, tmp_path, monkeypatch):
    """bench/compose.py loads two saved adapters by name; its effects agree with its own per-item scores,
    and at c = (0, 0) the honesty score is the bare base model's."""
    import pandas as pd

    from innerpissa.data.chat import DEFAULT_SYSTEM
    from innerpissa.eval.calibration import probe_items_fn

    model, tok, _, _ = two
    ip.save_adapter(model, tmp_path / "h", name="honesty")
    ip.save_adapter(model, tmp_path / "s", name="sentiment")
    path = Path(__file__).resolve().parents[1] / "bench" / "compose.py"
    spec = importlib.util.spec_from_file_location("bench_compose", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_compose", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    summary = bench.main(["--out", str(tmp_path / "run"), "--model", "tiny-random", "--adapter", f"honesty={tmp_path / 'h'}",
                          "--adapter", f"sentiment={tmp_path / 's'}", "--max-new-tokens", "4", "--n-prompts", "5"])
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    h = scores[scores.concept == "honesty"].set_index(["c_honesty", "c_sentiment", "item"])["score"]
    alone = (h.loc[1.0, 0.0] - h.loc[-1.0, 0.0]).mean()
    with_neg = (h.loc[1.0, -1.0] - h.loc[-1.0, -1.0]).mean()
    assert summary["honesty"]["effect_alone"][0] == pytest.approx(alone)
    assert summary["honesty"]["interference_at_-1"][0] == pytest.approx(with_neg - alone)
    assert abs(alone) > 1e-4  # the randomized honesty adapter moves its own score
    base, _ = ip.load_model("tiny-random")
    assert h.loc[0.0, 0.0].mean() == pytest.approx(float(probe_items_fn(base, tok)(DEFAULT_SYSTEM).mean()), abs=1e-6)
    texts = pd.read_csv(tmp_path / "run" / "texts.csv")
    assert len(texts) == 9 * 5 and texts["prompt"].iloc[0] == ip_prompts()[0]


def ip_prompts() -> list[str]:
    from innerpissa.eval.generation import load_neutral_prompts

    return load_neutral_prompts("test")
