"""The adapter's promises: rotation maths, c = 0 is the base model, merge, save/load, LoRA export, errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import logits, randomize
from torch import nn

import innerpissa as ip
from innerpissa.adapter import InnerPiSSALinear, rotation, scaled_singular_values, top_r_svd
from innerpissa.adapter.config import select_blocks

PROMPTS = ["the sky is clear today", "Honesty matters because people rely on it"]


def _inputs(tok):
    return tok(PROMPTS, return_tensors="pt", padding=True)


def _randomize(model, std: float = 0.3, seed: int = 1) -> None:
    """Give the adapter non-trivial parameters, as after training."""
    randomize(ip.adapter_parameters(model), std=std, seed=seed)


@pytest.fixture
def adapted(tiny):
    model, tok = tiny
    batch = _inputs(tok)
    base = logits(model, batch)
    ip.attach(model, ip.AdapterConfig(r=8, layers=(0, 1), rotate_u=True))
    _randomize(model)
    return model, tok, batch, base


# ---------------------------------------------------------------- rotation and singular values


@pytest.mark.parametrize("blocks", [1, 2])
def test_rotation_identity_orthogonal_and_reversible(blocks):
    torch.manual_seed(0)
    theta = torch.randn(blocks, 8 // blocks, 8 // blocks, dtype=torch.float64)
    eye = torch.eye(8, dtype=torch.float64)
    assert torch.equal(rotation(theta, 0.0, 0.3), eye)
    for c in (0.5, 1.0, -1.0, 3.0):
        r = rotation(theta, c, 0.3)
        torch.testing.assert_close(r @ r.T, eye, atol=1e-12, rtol=0)
        torch.testing.assert_close(rotation(theta, -c, 0.3), r.T, atol=1e-12, rtol=0)
        assert (r - eye).abs().max() > 1e-3  # non-trivial
    # batched coefficients give the same rotations as one at a time
    cs = torch.tensor([-1.0, 0.0, 0.7], dtype=torch.float64)
    rb = rotation(theta, cs, 0.3)
    for i, c in enumerate(cs.tolist()):
        torch.testing.assert_close(rb[i], rotation(theta, c, 0.3), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("t01", "c"), [(100.0, 1.0), (0.1, -0.5), (-3.0, 1.0), (0.02, 1.0)])
def test_max_angle_bounds_generator(t01, c):
    """A 2 x 2 block by hand: the skew entry a = t01 - t10 is soft-clamped to m tanh(a / m), and the Cayley
    rotation of c times it turns by phi = 2 atan(c a' / 2): at most 2 atan(m / 2) at |c| = 1, however large a."""
    import math

    m = 0.3
    theta = torch.tensor([[[0.0, t01], [0.0, 0.0]]], dtype=torch.float64)
    a = m * math.tanh(t01 / m)
    phi = 2 * math.atan(c * a / 2)
    want = torch.tensor([[math.cos(phi), math.sin(phi)], [-math.sin(phi), math.cos(phi)]], dtype=torch.float64)
    torch.testing.assert_close(rotation(theta, c, m), want, atol=1e-12, rtol=0)
    assert abs(phi) <= 2 * math.atan(m / 2) + 1e-12
    if abs(t01) < 0.05:  # a small generator is barely clamped
        assert a == pytest.approx(t01, rel=1e-2)
    # a huge generator in a 4 x 4 block: the rotation stays orthogonal and moves little
    big = rotation(torch.full((1, 4, 4), 100.0, dtype=torch.float64).triu(1), 1.0, m)
    torch.testing.assert_close(big @ big.T, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (big - torch.eye(4, dtype=torch.float64)).abs().max() < 0.6


@pytest.mark.parametrize("mode", ["add", "add_tanh", "mult", "none"])
def test_singular_values_at_zero_and_sign(mode):
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    d = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    assert torch.equal(scaled_singular_values(s, d, 0.0, mode), s)
    # negating delta swaps c and -c (what flip_sign relies on)
    torch.testing.assert_close(scaled_singular_values(s, -d, 0.8, mode), scaled_singular_values(s, d, -0.8, mode))
    batched = scaled_singular_values(s, d, torch.tensor([0.5, -1.0], dtype=torch.float64), mode)
    torch.testing.assert_close(batched[1], scaled_singular_values(s, d, -1.0, mode))


def test_add_mode_formula():
    s, d = torch.tensor([2.0, 1.0]), torch.tensor([0.5, -0.25])
    torch.testing.assert_close(scaled_singular_values(s, d, 2.0, "add"), torch.tensor([3.0, 0.5]))
    torch.testing.assert_close(scaled_singular_values(s, d, 1.0, "mult"), s * torch.exp(d))


# ---------------------------------------------------------------- the layer against a dense reference


def test_layer_matches_dense_formula():
    torch.manual_seed(0)
    lin = nn.Linear(12, 10, bias=True).double()
    cfg = ip.AdapterConfig(r=4, rotate_u=True, dtype="float64")
    layer = InnerPiSSALinear(lin, cfg, seed=3)
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            p.normal_(std=0.2)
    x = torch.randn(5, 12, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
    u, s, v = u[:, :4], s[:4], vh[:4].T
    w_res = lin.weight.detach() - u @ torch.diag(s) @ v.T
    c = 0.7
    r_v = rotation(layer.theta_v.detach(), c, 0.3)
    r_u = rotation(layer.theta_u.detach(), c, 0.3)
    s_c = s + c * layer.delta.detach()
    w_c = w_res + (u @ r_u) @ torch.diag(s_c) @ (v @ r_v).T  # METHOD section 2, literally
    expected = x @ w_c.T + lin.bias.detach()
    layer.coeff = c
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)
        torch.testing.assert_close(layer.delta_weight(c), w_c - lin.weight.detach(), atol=1e-10, rtol=0)
    assert torch.linalg.matrix_rank(layer.delta_weight(c)) <= 4


# ---------------------------------------------------------------- the model


def test_c0_is_base_and_pm1_differ(adapted):
    model, _, batch, base = adapted
    l0, lp, lm = logits(model, batch), logits(model, batch, 1.0), logits(model, batch, -1.0)
    assert (l0 - base).abs().max() <= 1e-5
    assert (logits(model, batch, 0.0) - base).abs().max() <= 1e-5
    assert (lp - base).abs().max() > 1e-3
    assert (lm - base).abs().max() > 1e-3
    assert (lp - lm).abs().max() > 1e-3


def test_per_example_coefficients_match_separate_forwards(adapted):
    model, tok, _, _ = adapted
    enc = tok([PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]], return_tensors="pt", padding=True)
    c = torch.tensor([1.0, -1.0, -1.0, 0.0])
    mixed = logits(model, enc, c)
    for i, ci in enumerate(c.tolist()):
        one = {k: v[i:i + 1] for k, v in enc.items()}
        torch.testing.assert_close(mixed[i:i + 1], logits(model, one, ci), atol=2e-5, rtol=1e-4)


def test_steer_restores_previous_coefficient(adapted):
    model = adapted[0]
    layers = list(ip.adapter_layers(model).values())
    with ip.steer(model, 0.5):
        with pytest.raises(KeyError):
            with ip.steer(model, -1.0):
                assert all(layer.coeff == -1.0 for layer in layers)
                raise KeyError("boom")
        assert all(layer.coeff == 0.5 for layer in layers)
    assert all(layer.coeff == 0.0 for layer in layers)


def test_gradients_flow_at_init_and_differ_by_sign(tiny):
    model, tok = tiny
    batch = _inputs(tok)
    ip.attach(model, ip.AdapterConfig(r=8, layers=(0, 1)))
    grads = {}
    for c in (1.0, -1.0):
        model.zero_grad()
        with ip.steer(model, c):
            model(**batch).logits[:, -1].logsumexp(-1).sum().backward()
        grads[c] = torch.cat([p.grad.flatten() for p in ip.adapter_parameters(model)])
        assert grads[c].abs().max() > 0
    assert not torch.allclose(grads[1.0], grads[-1.0])
    assert all(not p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)


def test_flip_sign_swaps_c(adapted):
    model, _, batch, _ = adapted
    before = logits(model, batch, -0.6)
    ip.flip_sign(model)
    torch.testing.assert_close(logits(model, batch, 0.6), before, atol=1e-5, rtol=1e-5)


def test_merge_equals_unmerged_and_unmerge_restores(adapted):
    model, _, batch, base = adapted
    weights = {n: layer.base_layer.weight.clone() for n, layer in ip.adapter_layers(model).items()}
    steered = logits(model, batch, 0.7)
    ip.merge_adapter(model, 0.7)
    assert (logits(model, batch) - steered).abs().max() <= 1e-4
    with pytest.raises(RuntimeError, match="unmerge"):
        with ip.steer(model, 1.0):
            pass
    ip.unmerge_adapter(model)
    for n, layer in ip.adapter_layers(model).items():
        torch.testing.assert_close(layer.base_layer.weight, weights[n], atol=1e-6, rtol=0)
    assert (logits(model, batch) - base).abs().max() <= 1e-5


def test_detach_restores_plain_linear(adapted):
    model, _, batch, base = adapted
    steered = logits(model, batch, 1.0)
    ip.detach_adapter(model, merge_at=1.0)
    assert not ip.adapter_layers(model)
    assert isinstance(model.model.layers[0].self_attn.o_proj, nn.Linear)
    assert (logits(model, batch) - steered).abs().max() <= 1e-4


def test_qwen3_architecture(tmp_path):
    model, tok = ip.load_model("tiny-random-qwen3")
    batch = _inputs(tok)
    base = logits(model, batch)
    ip.attach(model, ip.AdapterConfig(r=4))
    _randomize(model)
    assert (logits(model, batch) - base).abs().max() <= 1e-5
    assert (logits(model, batch, 1.0) - base).abs().max() > 1e-3


# ---------------------------------------------------------------- save, load, export


def test_save_load_round_trip(adapted, tmp_path):
    model, _, batch, _ = adapted
    ip.save_adapter(model, tmp_path / "a", extra={"note": "x"})
    meta = ip.read_adapter_meta(tmp_path / "a")
    assert meta["format_version"] == 1 and meta["extra"] == {"note": "x"}
    assert {m["name"] for m in meta["modules"]} == set(ip.adapter_layers(model))
    fresh, _ = ip.load_model("tiny-random")
    ip.load_adapter(fresh, tmp_path / "a")
    for c in (1.0, -0.5):
        assert torch.equal(logits(fresh, batch, c), logits(model, batch, c))
    assert not list(tmp_path.glob("a/.*")), "temporary files left behind"


def test_lora_kind_round_trips_through_the_one_save_and_load(tiny, tmp_path):
    """LoRA(c) is saved and loaded by save_adapter / load_adapter like InnerPiSSA, the kind read from the JSON."""
    from innerpissa.adapter.lora import CoeffLoRALinear, attach_lora

    model, tok = tiny
    batch = _inputs(tok)
    base = logits(model, batch)
    attach_lora(model, ip.AdapterConfig(r=4, layers=(0, 1), seed=3))
    _randomize(model)
    ip.save_adapter(model, tmp_path / "lora", coeff_range=(-1.0, 1.0))
    assert ip.read_adapter_meta(tmp_path / "lora")["kind"] == "lora"
    fresh, _ = ip.load_model("tiny-random")
    ip.load_adapter(fresh, tmp_path / "lora")
    assert all(isinstance(layer, CoeffLoRALinear) for layer in ip.adapter_layers(fresh).values())
    assert ip.adapter_layers(fresh).keys() == ip.adapter_layers(model).keys()
    for c in (1.0, -1.0):
        assert torch.equal(logits(fresh, batch, c), logits(model, batch, c))
    assert not torch.equal(logits(fresh, batch, 1.0), logits(fresh, batch, -1.0))
    assert torch.equal(logits(fresh, batch, 0.0), base)  # c = 0 is exactly the base model


def test_load_into_other_model_names_the_module(adapted, tmp_path):
    model = adapted[0]
    ip.save_adapter(model, tmp_path / "a")
    wider, _ = ip.models.tiny_random_model(hidden=32)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.o_proj has shape"):
        ip.load_adapter(wider, tmp_path / "a")
    other_seed, _ = ip.models.tiny_random_model(seed=7)
    with pytest.raises(ValueError, match="other weights"):
        ip.load_adapter(other_seed, tmp_path / "a")
    ip.load_adapter(other_seed, tmp_path / "a", strict=False)  # allowed when asked
    with pytest.raises(FileNotFoundError, match="not an innerpissa adapter"):
        ip.load_adapter(other_seed, tmp_path)


def test_export_lora_loads_in_peft(adapted, tmp_path):
    from peft import PeftModel

    model, _, batch, _ = adapted
    steered = logits(model, batch, 0.8)
    ip.export_lora(model, tmp_path / "lora", c=0.8)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 8
    fresh, _ = ip.load_model("tiny-random")
    peft_model = PeftModel.from_pretrained(fresh, str(tmp_path / "lora"))
    assert (logits(peft_model, batch) - steered).abs().max() <= 1e-4


# ---------------------------------------------------------------- bad input


def test_errors_for_bad_targets(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="no module matches"):
        ip.attach(model, ip.AdapterConfig(target_modules=("c_proj",)))
    with pytest.raises(ValueError, match="exceeds min"):
        ip.attach(model, ip.AdapterConfig(r=65, layers=(0,)))
    with pytest.raises(ValueError, match="out of range"):
        ip.attach(model, ip.AdapterConfig(layers=(5,)))
    with pytest.raises(ValueError, match="divisible"):
        ip.AdapterConfig(r=6, rotation_blocks=4)
    with pytest.raises(ValueError, match="nothing to learn"):
        ip.AdapterConfig(rotate_v=False, s_mode="none")
    with pytest.raises(RuntimeError, match="no InnerPiSSA adapter"):
        with ip.steer(model, 1.0):
            pass
    ip.attach(model, ip.AdapterConfig(r=4))
    with pytest.raises(RuntimeError, match="already has"):
        ip.attach(model, ip.AdapterConfig(r=4))
    with pytest.raises(ValueError, match="1-D"):
        with ip.steer(model, torch.ones(2, 2)):
            pass


def test_conv1d_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(TypeError, match="Conv1D"):
        ip.attach(gpt2, ip.AdapterConfig(r=4, target_modules=("c_proj",)))


def test_select_blocks_default_and_shallow():
    cfg = ip.AdapterConfig()
    blocks = select_blocks(30, cfg)
    assert len(blocks) == 8 and blocks[0] == 9 and blocks[-1] == 26
    assert select_blocks(2, cfg) == [1]
    assert select_blocks(30, ip.AdapterConfig(layers=(3, -1))) == [3, 29]


# ---------------------------------------------------------------- the embedded model


@pytest.mark.smollm2
def test_randomized_svd_close_to_full_on_smollm2(smollm2):
    model, _ = smollm2
    w = model.model.layers[20].mlp.down_proj.weight.detach().float()
    errs = {}
    for kind in ("full", "randomized"):
        u, s, v = top_r_svd(w, 64, kind, oversample=16, niter=4, seed=0)
        errs[kind] = torch.linalg.matrix_norm(w - u @ torch.diag(s) @ v.T).item()
    assert errs["randomized"] <= 1.01 * errs["full"], errs


@pytest.mark.smollm2
def test_smollm2_c0_exact(smollm2):
    model, tok = smollm2
    batch = _inputs(tok)
    base = logits(model, batch)
    ip.attach(model, ip.AdapterConfig(r=16, n_layers=4))
    try:
        _randomize(model, std=0.05)
        assert (logits(model, batch) - base).abs().max() <= 1e-5
        assert (logits(model, batch, 1.0) - base).abs().max() > 1e-3
    finally:
        ip.detach_adapter(model)
