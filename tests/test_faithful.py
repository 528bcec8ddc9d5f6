"""Issue 8's faithful method: each new setting does what it claims, on hand examples and the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import last_tokens_mask

import innerpissa as ip
from innerpissa.adapter.select import select_adapter_directions, variance_select
from innerpissa.train.config import PRESETS, preset
from innerpissa.train.reference import build_reference, tail_width
from innerpissa.train.trainer import Trainer, _batches, _tail_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _np_select(zp: np.ndarray, zn: np.ndarray, k: int, s: np.ndarray | None) -> list[int]:
    """Independent statement of the rule: k//2 by positive variance, the rest by negative, no repeats."""
    if s is not None:
        zp, zn = zp / s, zn / s
    vp, vn = zp.var(0, ddof=1), zn.var(0, ddof=1)
    first = list(np.argsort(-vp, kind="stable")[: k // 2])
    rest = [int(i) for i in np.argsort(-vn, kind="stable") if i not in first][: k - k // 2]
    return sorted(int(i) for i in first + rest)


def test_variance_select_hand_example():
    # coordinate 0 varies most on positives, 1 next; on negatives 0 (taken) then 3; S reorders the raw ranking
    zp = torch.tensor([[10.0, 4.0, 0.0, 1.0], [-10.0, -4.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    zn = torch.tensor([[9.0, 0.0, 1.0, 3.0], [-9.0, 0.0, -1.0, -3.0], [0.0, 0.0, 0.0, 0.0]])
    assert variance_select(zp, zn, 2).tolist() == [0, 3]
    assert variance_select(zp, zn, 3).tolist() == [0, 2, 3] == _np_select(zp.numpy(), zn.numpy(), 3, None)
    s = torch.tensor([100.0, 1.0, 1.0, 10.0])  # S-normalised: 0 shrinks to 0.1, 1 is now the top positive
    assert variance_select(zp, zn, 2, s).tolist() == [1, 2] == _np_select(zp.numpy(), zn.numpy(), 2, s.numpy())
    g = torch.Generator().manual_seed(0)
    zp, zn, s = torch.randn(50, 20, generator=g), torch.randn(40, 20, generator=g) * 2, torch.rand(20, generator=g) + .1
    for k in (1, 5, 8, 20):
        assert variance_select(zp, zn, k, s).tolist() == _np_select(zp.double().numpy(), zn.double().numpy(), k,
                                                                     s.double().numpy())
    with pytest.raises(ValueError, match="cannot keep"):
        variance_select(zp, zn, 21)


def _trainer(tmp_path, **kw):
    cfg = preset("tiny")
    cfg.out, cfg.data.n_pairs, cfg.calibrate = tmp_path / "run", 20, False
    for k, v in kw.items():
        obj = cfg
        *path, last = k.split(".")
        for p in path:
            obj = getattr(obj, p)
        setattr(obj, last, v)
    return Trainer(cfg)


def test_masks_select_exactly_the_last_n_suffix_tokens(tmp_path):
    t = _trainer(tmp_path)
    batch = t.collate([t.ds[i] for i in t.train_idx[:4]])
    width = tail_width(batch)
    T = batch.input_ids.shape[1]
    for n in (1, 2, 4):
        m = _tail_mask(batch, width, n)
        assert m.sum(1).tolist() == batch.tail_len.clamp(max=n).tolist()
        # the same positions as the last n real tokens of each row in the full sequence
        assert torch.equal(m, last_tokens_mask(batch.attention_mask, batch.tail_len.clamp(max=n))[:, T - width:])
        assert m[:, -min(n, int(batch.tail_len.min())):].all()  # right-aligned: the row's final tokens
    assert torch.equal(_tail_mask(batch, width, 0), last_tokens_mask(batch.attention_mask, batch.tail_len)[:, T - width:])
    assert int(batch.tail_len.min()) > 4  # so the v0 mask really is wider than the last-4 one


def test_mask_tokens_changes_the_gap_term(tmp_path):
    t = _trainer(tmp_path)
    t._setup_reference()
    with torch.no_grad():
        for p in t.params:
            p.normal_(std=0.2)
    batch = t.collate([t.ds[i] for i in t.train_idx[:4]])
    _, last4 = t.losses(batch)
    t.cfg.loss.mask_tokens = 0
    _, tail = t.losses(batch)
    assert last4["gap+1"].item() != pytest.approx(tail["gap+1"].item(), abs=1e-6)
    assert last4["proj+1"].item() == pytest.approx(tail["proj+1"].item())  # the projection term is unaffected


def test_data_selection_picks_the_s_normalised_variance_directions(tmp_path, tiny):
    model, tok = tiny
    cfg = preset("tiny")
    cfg.data.n_pairs = 16
    t = Trainer(cfg, model, tok)  # select='top' in the tiny preset: plain top-r
    layers = ip.adapter_layers(model)
    batches = _batches(t.ds, t.train_idx, 4, t.collate)
    # independent: capture every layer's base output on the last 4 tokens, project on the full U in numpy
    outs: dict[str, list] = {n: [] for n in layers}
    hooks = [layer.base_layer.register_forward_hook(lambda m, a, o, n=n: outs[n].append(o.detach()))
             for n, layer in layers.items()]
    masks = []
    with torch.no_grad():
        for b in batches:
            model(**b.model_inputs())
            masks.append(b.attention_mask)
    for h in hooks:
        h.remove()
    top = {n: layer.S.clone() for n, layer in layers.items()}
    chosen = select_adapter_directions(model, batches, n_tokens=4)
    differs = False
    for name, layer in layers.items():
        w = layer.base_layer.weight.detach().double().numpy()
        u, s, vh = np.linalg.svd(w, full_matrices=False)
        zs = []
        for y, am in zip(outs[name], masks, strict=True):
            last = [[int(np.nonzero(r)[0].max()) - j for j in (3, 2, 1, 0)] for r in am.numpy()]
            zs.append(np.stack([y.double().numpy()[i, idx] for i, idx in enumerate(last)]) @ u / s)
        z = np.concatenate(zs)  # [rows, 4, k], rows interleaved pos, neg
        zp, zn = z[0::2].reshape(-1, z.shape[-1]), z[1::2].reshape(-1, z.shape[-1])
        expected = _np_select(zp, zn, layer.r, None)
        assert chosen[name].tolist() == expected, name
        np.testing.assert_allclose(layer.S.double().numpy(), s[expected], rtol=1e-5)
        np.testing.assert_allclose(np.abs(layer.V.double().numpy()), np.abs(vh[expected].T), atol=1e-4)
        differs |= not torch.equal(layer.S, top[name])
    assert differs  # on this model the data picks other directions than the top-r by S


def test_data_selected_adapter_keeps_c0_merge_export_and_save_load(tmp_path, tiny):
    model, tok = tiny
    cfg = preset("tiny")
    cfg.data.n_pairs, cfg.epochs, cfg.calibrate = 16, 1, False
    cfg.adapter.select = "data"
    cfg.out = tmp_path / "run"
    ids = tok(["The weather this morning is"], return_tensors="pt")
    with torch.no_grad():
        base = model(**ids).logits.clone()
    result = ip.train.trainer.train(cfg, model, tok)
    layers = ip.adapter_layers(model)
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, base)  # c = 0 is still exactly the base model
        with ip.steer(model, 1.0):
            steered = model(**ids).logits.clone()
        ip.merge_adapter(model, 1.0)
        merged = model(**ids).logits.clone()
        ip.unmerge_adapter(model)
    torch.testing.assert_close(merged, steered, atol=1e-4, rtol=1e-4)
    assert (steered - base).abs().max() > 1e-5
    saved_s = {n: layer.S.clone() for n, layer in layers.items()}
    from innerpissa.models import load_model

    fresh, _ = load_model("tiny-random")
    ip.load_adapter(fresh, result.adapter_path)
    for n, layer in ip.adapter_layers(fresh).items():
        assert torch.equal(layer.S, saved_s[n])
    with torch.no_grad(), ip.steer(fresh, 1.0):
        torch.testing.assert_close(fresh(**ids).logits, steered, atol=1e-5, rtol=1e-5)
    from innerpissa.adapter.model import adapter_config

    assert adapter_config(fresh).select == "data"
    # the LoRA export at c = 1 carries exactly Delta W(1) of the selected directions
    from safetensors.torch import load_file

    ip.export_lora(fresh, tmp_path / "lora", 1.0)
    lora = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    for n, layer in ip.adapter_layers(fresh).items():
        ba = lora[f"base_model.model.{n}.lora_B.weight"] @ lora[f"base_model.model.{n}.lora_A.weight"]
        torch.testing.assert_close(ba, layer.delta_weight(1.0), atol=1e-6, rtol=1e-5)


def test_truncated_basis_direction_differs_full_basis_equals_raw(tmp_path):
    t = _trainer(tmp_path)
    tb = _batches(t.ds, t.train_idx, 4, t.collate)
    vb = _batches(t.ds, t.val_idx, 4, t.collate)
    d = t.cfg.direction

    def ref(basis, dims):
        return build_reference(t.model, tb, vb, len(t.ds), d.depth, d.module, d.where, basis, None, "mean", 2,
                               dims=dims)

    raw, full, trunc = ref("raw", None), ref("V", None), ref("V", 8)
    v = full.basis

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    assert cos(v @ full.direction, raw.direction) == pytest.approx(1.0, abs=1e-5)
    assert cos(v @ trunc.direction, raw.direction) < 0.99
    assert int((trunc.direction != 0).sum()) <= 8
    # the kept coordinates are the S-normalised variance choice on the training pairs' projected states
    train_idx = torch.tensor(t.train_idx)
    states = []
    with torch.no_grad():
        from innerpissa.train.reference import reference_pass

        states, _, _ = reference_pass(t.model, tb, full.point, v, 2, len(t.ds))
    s = torch.linalg.svdvals(t.model.get_submodule(full.point.module).weight.double())
    st = states[train_idx].double().numpy()
    expected = _np_select(st[:, 0].reshape(-1, 64), st[:, 1].reshape(-1, 64), 8, s.numpy())
    assert sorted(torch.nonzero(trunc.direction).flatten().tolist()) == expected


def test_calibration_never_flips_on_a_probe_that_personas_do_not_move(tiny, monkeypatch):
    from innerpissa.eval import calibration as cal

    model, tok = tiny
    ip.attach(model, ip.AdapterConfig(r=4))
    layer = next(iter(ip.adapter_layers(model).values()))
    before = [p.detach().clone() for p in ip.adapter_parameters(model)]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(16, generator=g)

    def items(adapter_slope: float, persona_slope: float):
        def fn(*a, **k):
            def score(system: str) -> torch.Tensor:
                persona = 1.0 if "an honest" in system else -1.0 if "dishonest" in system else 0.0
                return adapter_slope * float(layer.coeff) + persona_slope * persona + 0.5 * noise * persona
            return score
        return fn

    # +1 clearly less honest, but the personas do not move the probe: kept, with the reason
    monkeypatch.setattr(cal, "probe_items_fn", items(-1.0, 0.0))
    r = cal.calibrate(model, tok, mode="significant")
    assert not r["flipped"] and not r["probe_responds"] and r["effect_ci"][1] < 0
    # the probe responds, the effect is against: flipped, and the parameters are negated
    monkeypatch.setattr(cal, "probe_items_fn", items(-1.0, 1.0))
    r = cal.calibrate(model, tok, mode="significant")
    assert r["flipped"] and r["probe_responds"] and r["persona_ci"][0] > 0 and r["probe_effect"] > 0
    assert all(torch.equal(p, -b) for p, b in zip(ip.adapter_parameters(model), before, strict=True))
    # the probe responds but the adapter's effect is only noise: kept
    monkeypatch.setattr(cal, "probe_items_fn", items(0.0, 1.0))
    r = cal.calibrate(model, tok, mode="significant")
    assert not r["flipped"] and r["effect_ci"][0] <= 0 <= r["effect_ci"][1]
    monkeypatch.setattr(cal, "probe_items_fn", items(-1.0, 1.0))
    assert not cal.calibrate(model, tok, mode="never")["flipped"]


def test_bootstrap_ci_matches_numpy():
    from innerpissa.eval.stats import bootstrap_mean_ci

    x = torch.tensor([0.1, 0.4, -0.2, 0.3, 0.0, 0.5, 0.2, 0.1])
    lo, hi = bootstrap_mean_ci(x, n_boot=4000, seed=1)
    rng = np.random.default_rng(1)
    m = rng.choice(x.numpy(), size=(4000, 8)).mean(1)
    assert lo == pytest.approx(np.quantile(m, 0.025), abs=0.03) and hi == pytest.approx(np.quantile(m, 0.975), abs=0.03)
    assert lo < float(x.mean()) < hi


def test_presets_and_compare_pair_count():
    from innerpissa.compare import Compare
    from innerpissa.methods import train_config

    q = preset("qwen3-4b-gpu")
    assert (q.model, q.adapter.r, q.adapter.rotation_blocks, q.batch_size * q.grad_accum) == \
        ("Qwen/Qwen3-4B-Instruct-2507", 256, 1, 32)
    assert (q.epochs, q.patience, q.data.n_pairs, q.loss.kind, q.loss.w_mono, q.loss.w_coh) == (15, 4, 800, "raw", 100, 40)
    assert (q.adapter.select, q.direction.dims, q.loss.mask_tokens, q.loss.mono_ordering) == ("data", 64, 4, "forward")
    v0 = preset("smollm2-cpu-v0")
    assert (v0.adapter.r, v0.epochs, v0.lr, v0.loss.mask_tokens, v0.direction.dims, v0.adapter.select) == \
        (32, 3, 3e-3, 0, None, "top")
    assert "smollm2-cpu-v0" in PRESETS
    assert train_config(Compare(preset="qwen3-4b-gpu"), 0).data.n_pairs == 800
    assert train_config(Compare(preset="qwen3-4b-gpu", n_pairs=50), 0).data.n_pairs == 50
    # the output-objective preset is exactly the dev-chosen variant at the budget it was measured at
    from innerpissa.train.variants import apply_variant

    measured = apply_variant("pref-nll-top-cfg", preset("smollm2-cpu"))
    measured.adapter.r, measured.grad_accum, measured.patience, measured.data.n_pairs, measured.epochs = 64, 1, 0, 96, 2
    pref = preset("smollm2-cpu-pref")
    assert pref.to_dict() == measured.to_dict() and "smollm2-cpu-pref" in PRESETS
    assert (pref.objective, pref.outputs.w_nll, pref.outputs.guidance, pref.adapter.select) == ("pref", 1.0, 2.0, "top")


def test_variants_change_what_they_name():
    from innerpissa.train.variants import VARIANTS, apply_variant

    base = preset("smollm2-cpu")
    v0 = apply_variant("default-v0", base)
    assert base.adapter.r == 128 and v0.adapter.r == 32  # the input is not modified
    ref = preset("smollm2-cpu-v0")
    ref.out = v0.out
    assert v0.to_dict() == ref.to_dict()
    one = {"v0+mask": ("loss", "mask_tokens", 4), "v0+select": ("adapter", "select", "data"),
           "v0+dims": ("direction", "dims", 64), "v0+sign": ("loss", "mono_ordering", "forward")}
    flat_v0 = v0.to_dict()
    for name, (sec, key, val) in one.items():
        d = apply_variant(name, base).to_dict()
        assert d[sec][key] == val and flat_v0[sec][key] != val
        diff = {(s, k) for s in d if isinstance(d[s], dict) for k in d[s] if d[s][k] != flat_v0[s][k]}
        diff |= {(s, "") for s in d if not isinstance(d[s], dict) and d[s] != flat_v0[s]}
        assert (sec, key) in diff and len(diff) <= 2, (name, diff)
    f = apply_variant("faithful", base)
    assert (f.loss.mask_tokens, f.adapter.select, f.direction.dims, f.loss.mono_ordering, f.adapter.r) == \
        (4, "data", 64, "forward", 32)
    assert apply_variant("r32", base).adapter.r == 32 and apply_variant("depth0.5", base).direction.depth == 0.5
    assert apply_variant("no-vrot", base).adapter.rotate_v is False
    assert apply_variant("s-none", base).adapter.s_mode == "none"
    assert apply_variant("logsigmoid", base).loss.kind == "logsigmoid" and apply_variant("raw", v0).loss.kind == "raw"
    assert {"r128", "depth0.8", "s-add", "preset"} <= set(VARIANTS)
    assert apply_variant("lr2x", base).lr == 2 * base.lr and apply_variant("epochs2x", base).epochs == 2 * base.epochs
    assert (apply_variant("layers12", base).adapter.n_layers, apply_variant("wcoh0", base).loss.w_coh) == (12, 0.0)
    assert base.lr == preset("smollm2-cpu").lr  # still untouched
    with pytest.raises(ValueError, match="unknown variant"):
        apply_variant("telepathy", base)


def _uncalibrated_tiny():
    cfg = preset("tiny")
    cfg.calibrate = False
    return cfg


def test_ablate_end_to_end_on_tiny(tmp_path, shared_data):
    import pandas as pd

    from innerpissa.ablate import Ablate, dilemma_half, run_ablate
    from innerpissa.data.dilemmas import load_dilemmas

    ab = Ablate(variants=("preset", "v0+mask"), out=tmp_path / "ab", train=_uncalibrated_tiny(), seeds=(0,),
                n_pairs=12, epochs=1, n_dilemmas=4, coeffs=(-1.0, 0.0, 1.0), n_boot=30,
                data_dir=shared_data / "daily_dilemmas")
    paths = run_ablate(ab)
    rows = pd.read_csv(paths["rows"])
    assert set(rows["method"]) == {"preset", "v0+mask"}
    per = rows.groupby("method")["dilemma_idx"].apply(lambda x: tuple(sorted(set(x))))
    assert per.nunique() == 1  # same rows for every variant
    base = rows[rows.coeff == 0].pivot_table(index=["dilemma_idx", "action_type"], columns="method", values="logp_yes")
    assert (base["preset"] - base["v0+mask"]).abs().max() < 1e-4  # c = 0 is the base model for both
    training = pd.read_csv(paths["training"])
    assert set(training["variant"]) == {"preset", "v0+mask"} and training["val_ordered_pct"].between(0, 100).all()
    assert paths["plot"].exists() and "v0+mask" in paths["summary"].read_text()
    from innerpissa.ablate import variant_config

    assert variant_config(ab, "default-v0", 0).data == variant_config(ab, "preset", 0).data  # same pairs
    # the select and test halves never share a dilemma
    data = load_dilemmas(shared_data / "daily_dilemmas")
    sel = set(dilemma_half(data, Ablate(split="select"))["dilemma_idx"])
    test = set(dilemma_half(data, Ablate(split="test"))["dilemma_idx"])
    assert sel and test and not sel & test and sel | test == set(data["dilemma_idx"])
    assert set(rows["dilemma_idx"]) <= sel  # the default split scores the select half only


def test_ablate_generation_task_on_tiny(tmp_path):
    """The generation task: variants trained on the sentiment pairs, scored on the same dev prompts."""
    import pandas as pd

    from innerpissa.ablate import Ablate, run_ablate
    from innerpissa.eval.generation import load_neutral_prompts
    from innerpissa.eval.settings import GenSettings

    ab = Ablate(variants=("preset", "shift"), out=tmp_path / "abg", train=_uncalibrated_tiny(), seeds=(0,),
                n_pairs=12, epochs=1, coeffs=(-1.0, 0.0, 1.0), n_boot=30, task="generation",
                gen=GenSettings(n_prompts=3, max_new_tokens=5))
    paths = run_ablate(ab)
    rows = pd.read_csv(tmp_path / "abg" / "rows.csv")
    assert set(rows["method"]) == {"preset", "shift"}
    dev = load_neutral_prompts("dev")[:3]
    assert set(rows["prompt"]) == set(dev)  # the dev split when choosing variants, never the test prompts
    # chosen and reported on dev (compare's rule): the sweep starts from --coeffs and is extended; the report's
    # rows are the chosen c's and c = 0, at every prompt
    sweep, chosen = pd.read_csv(tmp_path / "abg" / "dev_rows.csv"), pd.read_csv(tmp_path / "abg" / "choices.csv")
    assert set(sweep["prompt"]) == set(dev) and {-1.0, 0.0, 1.0} <= set(sweep["c"])
    for m, g in rows.groupby("method"):
        assert set(g["c"]) == set(chosen[chosen["method"] == m]["c"]) | {0.0} and (g.groupby("c").size() == 3).all()
    c0 = rows[rows.c == 0].pivot_table(index="prompt_idx", columns="method", values="score")
    assert (c0["preset"] == c0["shift"]).all()  # c = 0 is the same base continuation for both
    assert "shift" in paths["summary"].read_text()
    cfg_json = (tmp_path / "abg" / "train" / "shift_seed0" / "config.json").read_text()
    assert '"builtin": "sentiment"' in cfg_json and '"loss_target": "shift"' in cfg_json


def test_ablate_starts_the_generation_sweep_from_compares_grid():
    """A variant's side stopped by validity keeps its last point in, so the starting grid sets the resolution:
    ablate's generation task starts from compare's fine grid (the same rule chooses variants and reports them);
    the dilemma task keeps its five coefficients; an explicit --coeffs wins on both."""
    from innerpissa.ablate import DILEMMA_COEFFS, Ablate
    from innerpissa.eval.settings import FINE_GRID

    assert Ablate(task="generation").grid() == FINE_GRID and 0.75 in FINE_GRID and -0.125 in FINE_GRID
    assert Ablate(task="dilemmas").grid() == DILEMMA_COEFFS == (-1.0, -0.5, 0.0, 0.5, 1.0)
    assert Ablate(task="generation", coeffs=(-1.0, 1.0)).grid() == (-1.0, 1.0)


def test_shift_moved_target_measures_the_move_from_c0(tmp_path):
    """`shift_moved` feeds the loss the shift minus its c = 0 value: 0 for an adapter that does nothing, while
    the plain `shift` still carries the states' offset; with a moving adapter it is shift(c) - shift(0)."""
    t = _trainer(tmp_path, loss_target="shift_moved")
    t._setup_reference()
    batch = t.collate([t.ds[i] for i in t.train_idx[:4]])
    with torch.no_grad():
        for p in t.params:
            p.zero_()
        _, moved = t.losses(batch)
        t.cfg.loss_target = "shift"
        _, plain = t.losses(batch)
    assert abs(float(moved["sep+1"])) < 1e-5 and abs(float(moved["sep-1"])) < 1e-5
    assert abs(float(plain["sep+1"])) > 1e-3  # the offset the moved target removes
    with torch.no_grad():
        for p in t.params:
            p.normal_(std=0.3)
        _, plain = t.losses(batch)
        t.cfg.loss_target = "shift_moved"
        _, moved = t.losses(batch)
        p0 = t.ref.batch_values(batch, tail_width(batch))[0]
        shift0 = ((p0[0::2] + p0[1::2]) / 2).mean()
    assert float(moved["sep+1"]) == pytest.approx(float(plain["sep+1"]) - float(shift0), abs=1e-5)
