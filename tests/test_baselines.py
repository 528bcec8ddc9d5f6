"""Baselines on the tiny random model: c = 0 is the base model, c moves hidden states by exactly c * vector,
hooks never outlive their context, PCA finds a planted direction, prompting switches the system prompt,
sign calibration flips what it should."""

from __future__ import annotations

import pytest
import torch

from innerpissa.anatomy import CapturePoint, HiddenCapture, block_name, default_layers
from innerpissa.baselines import (
    BASELINE_NAMES,
    PersonaPrompting,
    SSpaceEdits,
    SSpaceSteerer,
    SteeringVectors,
    VectorSteerer,
    available_baselines,
    build_baseline,
    calibrate_sign,
    external_status,
    train_sspace,
    train_vectors,
)
from innerpissa.baselines.common import edited_outputs
from innerpissa.baselines.sspace import fit_edit
from innerpissa.baselines.vectors import vectors_from_diffs
from innerpissa.data.pairs import pairs_from_sources
from innerpissa.models import load_model
from innerpissa.steering import NoSteering

TRAINED = [n for n in available_baselines() if n not in ("prompting", "instruction")]  # the prompt-only ones touch no weight


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    model, tok = load_model("tiny-random")
    pairs = pairs_from_sources(tok, max_pairs=12)
    ids = tok(["Pretend you're an honest person.", "The weather today is mild"], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        model(**ids, output_hidden_states=True)  # let transformers install its lazy capture hooks now
    return model, tok, pairs, ids


@pytest.fixture(scope="module")
def built(setup):
    model, tok, pairs, _ = setup
    cache: dict = {}
    return {name: build_baseline(name, model, tok, pairs, seed=0, cache=cache) for name in available_baselines()}


def _hooks(model) -> set[int]:
    return {id(h) for m in model.modules() for h in m._forward_hooks.values()}


@torch.no_grad()
def _logits(model, ids):
    return model(**ids).logits


def test_names_and_defaults(built):
    assert set(built) == set(available_baselines()) and set(built) <= set(BASELINE_NAMES)
    for name, s in built.items():
        assert s.name == name and 0.0 in s.default_coeffs
        assert min(s.default_coeffs) < 0 < max(s.default_coeffs)
    assert built["prompting"].default_coeffs == (-1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("repe", None, None, [])


@pytest.mark.parametrize("name", TRAINED)
def test_zero_is_base_and_context_restores(setup, built, name):
    model, _, _, ids = setup
    steerer, base, before = built[name], _logits(model, ids), _hooks(model)
    with steerer.at(0.0):
        assert _hooks(model) == before  # c = 0 registers nothing
        assert (_logits(model, ids) - base).abs().max() <= 1e-6
    with steerer.at(2.0):
        assert _hooks(model) != before
        assert (_logits(model, ids) - base).abs().max() > 1e-4
    assert _hooks(model) == before
    assert (_logits(model, ids) - base).abs().max() <= 1e-6


@pytest.mark.parametrize("name", TRAINED)
def test_hooks_removed_on_exception(setup, built, name):
    model, _, _, ids = setup
    before, base = _hooks(model), _logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"), built[name].at(-1.5):
        _logits(model, ids)
        raise RuntimeError("boom")
    assert _hooks(model) == before
    assert torch.equal(_logits(model, ids), base)


def test_edited_outputs_cleans_up_a_failed_registration(setup):
    model, *_ = setup
    before = _hooks(model)
    with pytest.raises(AttributeError), edited_outputs(model, {block_name(model, 0): lambda x, o: o,
                                                              "no.such.module": lambda x, o: o}):
        pass
    assert _hooks(model) == before


@pytest.mark.parametrize("c", [2.5, -0.75])
def test_vector_moves_the_hooked_block_by_exactly_c_v(setup, c):
    model, tok, pairs, ids = setup
    sv = train_vectors(model, tok, pairs, "mean_diff", layers=[0])
    steerer = VectorSteerer(model, sv)
    point = CapturePoint(block_name(model, 0))
    with torch.no_grad(), HiddenCapture(model, [point]) as cap:
        base_hs = model(**ids, output_hidden_states=True).hidden_states
        base = cap.hidden[point.key]
        with steerer.at(c):
            hs = model(**ids, output_hidden_states=True).hidden_states
            moved = cap.hidden[point.key]
    expected = c * sv.vectors[0]
    assert torch.allclose(moved - base, expected.expand_as(base), atol=1e-6)
    # hooks run before transformers' capture: output_hidden_states reports the steered state too
    assert torch.allclose(hs[1] - base_hs[1], expected.expand_as(base), atol=1e-6)
    assert not torch.allclose(hs[2], base_hs[2], atol=1e-4)  # and the next block sees it


def test_vectors_from_planted_diffs():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    diffs = (1 + 2 * torch.rand(100, 1, 1, generator=g)) * d + 0.05 * torch.randn(100, 3, 32, generator=g)
    out = {m: vectors_from_diffs({5: diffs}, m, seed=3)[0][5] for m in ("pca", "mean_diff", "random")}
    mean = diffs.mean(1).mean(0)
    assert torch.allclose(out["mean_diff"], mean)
    for v in out.values():
        assert v.norm().item() == pytest.approx(mean.norm().item(), rel=1e-5)  # one shared unit
    assert (out["pca"] @ d / out["pca"].norm()).item() > 0.99  # right axis, sign of the mean
    assert (vectors_from_diffs({5: -diffs}, "pca")[0][5] @ d).item() < 0
    again = vectors_from_diffs({5: diffs}, "random", seed=3)[0][5]
    assert torch.equal(again, out["random"])
    assert not torch.equal(vectors_from_diffs({5: diffs}, "random", seed=4)[0][5], again)
    with pytest.raises(ValueError, match="unknown vector method"):
        vectors_from_diffs({5: diffs}, "ica")


def test_pca_recovers_a_direction_planted_in_the_model(setup):
    """Plant a direction into block 0's output on positive rows only (even rows of every pair batch)."""
    model, tok, pairs, _ = setup
    g = torch.Generator().manual_seed(1)
    d = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=g), dim=0)

    def plant(_x, out):
        amount = 0.5 + torch.rand(out.shape[0] // 2, 1, 1, generator=g)  # varies per pair: centered PCA sees it
        out = out.clone()
        out[0::2] += amount * d
        return out

    with edited_outputs(model, {block_name(model, 0): plant}):
        repeng = train_vectors(model, tok, pairs, "pca", layers=[0], batch_size=4)
        v0 = train_vectors(model, tok, pairs, "pca", layers=[0], n_tokens=2, batch_size=4, style="v0")
    for sv in (repeng, v0):
        v = sv.vectors[0]
        assert (v @ d / v.norm()).item() > 0.99  # the planted axis, pointing toward the positive rows
        assert sv.meta["stats"]["0"]["cos_with_mean"] > 0.99
    assert repeng.vectors[0].norm().item() == pytest.approx(1.0, abs=1e-5)  # repeng's unit vector


def test_save_load_roundtrip(setup, built, tmp_path):
    model, _, _, ids = setup
    for name in ("pca", "sspace"):
        steerer = built[name]
        steerer.save(tmp_path / name)
        loaded = (VectorSteerer if name == "pca" else SSpaceSteerer).load(model, tmp_path / f"{name}.json")
        with torch.no_grad(), steerer.at(1.5):
            a = _logits(model, ids)
        with torch.no_grad(), loaded.at(1.5):
            b = _logits(model, ids)
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="does not hold steering vectors"):
        SteeringVectors.load(tmp_path / "sspace")
    assert isinstance(SSpaceEdits.load(tmp_path / "sspace.safetensors"), SSpaceEdits)


def test_sspace_moves_module_output_by_c_delta_w_x(setup):
    model, tok, pairs, ids = setup
    edits = train_sspace(model, tok, pairs, layers=[1], modules=("mlp.down_proj",))
    steerer = SSpaceSteerer(model, edits)
    point = CapturePoint(f"{block_name(model, 1)}.mlp.down_proj", "output")
    inp = CapturePoint(point.module, "input")
    with torch.no_grad(), HiddenCapture(model, [point, inp]) as cap:
        model(**ids)
        base, x = cap.hidden[point.key], cap.hidden[inp.key]
        with steerer.at(-3.0):
            model(**ids)
            moved = cap.hidden[point.key]
    dw = edits.edits[(1, "mlp.down_proj")].delta_weight()
    assert torch.allclose(moved - base, -3.0 * x @ dw.T, atol=1e-5)
    assert edits.meta["stats"]["1.mlp.down_proj"]["mean_shift_cos"] > 0


def test_sspace_lstsq_fit_ignores_svd_sign_conventions():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(6, 10, generator=g), torch.randn(50, 10, generator=g) + 1.0
    diff = torch.randn(40, 6, generator=g) + torch.tensor([1.0, -2, 0, 0, 0.5, 0])
    a, stats = fit_edit(w, diff, x)
    b, _ = fit_edit(-w, diff, x)  # same singular subspaces, opposite pairing signs
    assert torch.allclose(a.delta_weight(), b.delta_weight(), atol=1e-5)
    shift = (x @ a.delta_weight().T).norm(dim=-1).mean()
    assert shift.item() == pytest.approx(diff.mean(0).norm().item(), rel=1e-4)  # c = 1: one mean difference
    assert stats["mean_shift_cos"] > 0
    with pytest.raises(ValueError, match="unknown S-space fit"):
        fit_edit(w, diff, x, fit="ridge")


def test_prompting_switches_system_prompt(setup):
    model, _, _, ids = setup
    p = PersonaPrompting()
    default = "You are a helpful assistant."
    assert p.system_prompt(0, default) == default
    assert p.system_prompt(1, default).startswith(default) and "an honest" in p.system_prompt(1, default)
    assert "a dishonest" in p.system_prompt(-1, default)
    assert PersonaPrompting(mode="replace").system_prompt(-1, default) == p.negative
    assert PersonaPrompting(positive="Be frank.", negative="Be sly.", neutral="Hi.").system_prompt(0, "x") == "Hi."
    base = _logits(model, ids)
    with p.at(1):
        assert torch.equal(_logits(model, ids), base)  # prompting never touches the model
    with pytest.raises(ValueError, match="only c in"):
        p.system_prompt(0.5, default)
    with pytest.raises(ValueError, match="only c in"), p.at(2.0):
        pass
    p.flip_sign()
    assert "a dishonest" in p.system_prompt(1, default)


def test_calibrate_sign_flips_vectors_only_on_evidence(setup):
    model, tok, pairs, ids = setup
    steerer = VectorSteerer(model, train_vectors(model, tok, pairs, "mean_diff", layers=[0]))
    v, point = steerer.vectors.vectors[0], CapturePoint(block_name(model, 0))

    def along_v(sign: float, noise: float = 0.0):
        g = torch.Generator().manual_seed(0)

        def probe() -> torch.Tensor:  # per token: how far block 0's output sits along v, as the model is now
            with torch.no_grad(), HiddenCapture(model, [point]) as cap:
                model(**ids)
            items = sign * (cap.hidden[point.key] @ v).flatten()
            return items + noise * torch.randn(items.shape, generator=g)
        return probe

    kept = calibrate_sign(steerer, along_v(+1.0))
    assert not kept["flipped"] and kept["sign"] == "confirmed" and kept["effect_ci"][0] > 0
    assert set(kept["probe_score"]) == {"-1", "+0", "+1"} and kept["n_items"] == ids["input_ids"].numel()
    flipped = calibrate_sign(steerer, along_v(-1.0), coeff=2.0)
    assert flipped["flipped"] and flipped["sign"] == "flipped" and steerer.sign == -1.0
    assert flipped["probe_effect"] > 0 and flipped["effect_ci"][0] > 0  # reported after the flip
    assert set(flipped["probe_score"]) == {"-2", "+0", "+2"}
    with steerer.at(1.0):  # +1 now means toward the (negated) probe
        toward = float(along_v(-1.0)().mean())
    assert toward > float(along_v(-1.0)().mean())
    # a probe whose noise swamps the effect: whatever its mean says, the CI spans 0 and the sign is kept
    steerer.flip_sign()
    noisy = calibrate_sign(steerer, along_v(-1.0, noise=1e4), coeff=1e-3)
    assert noisy["probe_effect"] != 0 and noisy["effect_ci"][0] < 0 < noisy["effect_ci"][1]
    assert not noisy["flipped"] and noisy["sign"] == "undetermined" and steerer.sign == 1.0


def test_calibration_rules_and_scalar_probes():
    p = PersonaPrompting()
    scalar = calibrate_sign(p, lambda system: -1.0 if "an honest" in system else 0.0)
    assert not scalar["flipped"] and scalar["sign"] == "undetermined" and scalar["effect_ci"] is None
    assert "no per-item scores" in scalar["reason"] and p.sign == 1.0  # one number has no noise estimate
    result = calibrate_sign(p, lambda system: -1.0 if "an honest" in system else 0.0, rule="always")
    assert result["flipped"] and "an honest" in p.system_prompt(-1, "S")  # the v0 rule, for the record
    p.flip_sign()
    items = calibrate_sign(p, lambda system: [-1.0, -2.0, -1.5] if "an honest" in system else [0.0, 0.1, 0.0])
    assert items["flipped"] and items["effect_ci"][0] > 0 and "an honest" in p.system_prompt(-1, "S")
    assert not calibrate_sign(p, lambda s: [-1.0, -2.0] if "an honest" in s else [0.0, 0.0], rule="never")["flipped"]
    with pytest.raises(TypeError, match="flip_sign"):
        calibrate_sign(NoSteering(), lambda: 0.0)
    calls = []
    out = calibrate_sign(NoSteering(), iter([[1.0, 2.0], [0.0, 0.0], [-1.0, -1.5]]).__next__,
                         flip=lambda: calls.append(1))
    assert out["flipped"] and calls == [1]
    with pytest.raises(ValueError, match="coeff must be positive"):
        calibrate_sign(p, lambda: 0.0, coeff=0)
    with pytest.raises(ValueError, match="unknown calibration rule"):
        calibrate_sign(p, lambda: 0.0, rule="sometimes")
    with pytest.raises(ValueError, match="1-D tensor"):
        calibrate_sign(p, lambda: [[0.0]])


def test_bootstrap_mean_ci_covers_the_mean():
    from innerpissa.eval.stats import bootstrap_mean_ci

    x = torch.arange(20, dtype=torch.float64)
    lo, hi = bootstrap_mean_ci(x, seed=1)  # the calibration passes its per-item tensors as they are
    assert lo < float(x.mean()) < hi and hi - lo < 10
    assert bootstrap_mean_ci(x, seed=1) == (lo, hi)
    assert bootstrap_mean_ci(torch.ones(1)) == (1.0, 1.0)  # one item: no spread


def test_activation_cache_shares_one_pass(setup):
    model, tok, pairs, _ = setup
    cache: dict = {}
    for name in ("random", "mean_diff"):
        build_baseline(name, model, tok, pairs, seed=1, cache=cache, layers=[1])
    build_baseline("pca", model, tok, pairs, cache=cache, layers=[1], style="v0")
    assert len(cache) == 1
    build_baseline("pca", model, tok, pairs, cache=cache, layers=[1])  # repeng's read: the last token
    build_baseline("pca", model, tok, pairs, cache=cache, layers=[1], center=False)
    assert len(cache) == 2
    with pytest.raises(TypeError):
        build_baseline("pca", model, tok, pairs, centre=False)  # misspelled keywords are not swallowed


def test_default_layers_are_middle_to_late(setup):
    model, *_ = setup
    assert default_layers(model) == [1]
    with pytest.raises(ValueError, match="out of range"):
        block_name(model, 2)


def test_external_status_reports_each_package(monkeypatch, tmp_path):
    """Each line says what is true here, and each branch (missing, import failing, pinned, other version, repeng's
    own Python set or not) gives its own line, checked by planting the package state."""
    import importlib.metadata as md

    from innerpissa.baselines import external as ext

    def truth(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    status = external_status()
    assert status["environment"].split(", ")[0] == f"transformers {md.version('transformers')}"
    assert f"torch {md.version('torch')}" in status["environment"]
    for dist, (_module, _pin, how) in ext.EXTERNAL_PACKAGES.items():
        version = truth(dist)
        if version is None:
            assert status[dist] == f"not installed ({how})"
        else:
            assert status[dist].startswith((f"ok {version}", f"installed {version} but import fails")), status[dist]

    # planted states of one package
    real_import, real_version = ext.importlib.import_module, md.version
    monkeypatch.setattr(ext.md, "version", lambda dist: "0.4.0" if dist == "repeng" else real_version(dist))

    def broken(name, *a, **k):
        if name == "repeng":
            raise AttributeError("`np.float_` was removed in the NumPy 2.0 release")
        return real_import(name, *a, **k)

    monkeypatch.setattr(ext.importlib, "import_module", broken)
    assert external_status()["repeng"] == ("installed 0.4.0 but import fails: AttributeError: `np.float_` was "
                                           "removed in the NumPy 2.0 release")
    monkeypatch.setattr(ext.importlib, "import_module", lambda name, *a, **k: None)
    assert external_status()["repeng"] == "ok 0.4.0"
    monkeypatch.setattr(ext.md, "version", lambda dist: "0.5.1")
    assert external_status()["steering-vectors"] == "ok 0.5.1 (tested with 0.12.2)"
    monkeypatch.undo()

    monkeypatch.delenv(ext.REPENG_PYTHON_ENV, raising=False)
    line = external_status()["repeng_external"]
    assert line.startswith("unavailable: repeng_external needs a Python with repeng 0.4.0") and ext.REPENG_PYTHON_ENV in line
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv(ext.REPENG_PYTHON_ENV, str(python))
    assert external_status()["repeng_external"] == f"ok {python}"


def test_steering_vectors_missing_says_how_to_install(setup):
    from innerpissa.baselines import SteeringVectorsSteerer

    if "steering_vectors" in available_baselines():
        pytest.skip("steering-vectors is installed here: its missing-package message cannot be shown")
    model, tok, pairs, _ = setup
    with pytest.raises(ImportError, match="steering-vectors is unavailable: not installed .*pip install --no-deps"):
        SteeringVectorsSteerer(model, tok, pairs)


def test_steering_vectors_wrapper(setup):
    model, tok, pairs, ids = setup
    if "steering_vectors" not in available_baselines():
        pytest.skip("steering-vectors is not installed (pip install --no-deps steering-vectors==0.12.2 "
                    "'scikit-learn>=1.4'): the comparison with the package is not run")
    ours = train_vectors(model, tok, pairs, "mean_diff", layers=[1], n_tokens=1)
    theirs = build_baseline("steering_vectors", model, tok, pairs, layers=[1])
    # the package's CAA at the last token equals our mean difference on one token (left padding handled)
    assert torch.allclose(theirs.vector.layer_activations[1], ours.vectors[1], atol=1e-5)
    base = _logits(model, ids)
    with theirs.at(0.0):
        assert torch.equal(_logits(model, ids), base)
    with theirs.at(3.0):
        assert not torch.allclose(_logits(model, ids), base, atol=1e-4)
    assert torch.equal(_logits(model, ids), base)


def test_half_precision_model():
    model, tok = load_model("tiny-random", dtype="bfloat16")
    pairs = pairs_from_sources(tok, max_pairs=6)
    ids = tok(["The weather today is mild"], return_tensors="pt")
    base = _logits(model, ids)
    for steerer in (VectorSteerer(model, train_vectors(model, tok, pairs, "pca", layers=[0, 1])),
                    SSpaceSteerer(model, train_sspace(model, tok, pairs, layers=[1]))):
        with steerer.at(4.0):
            out = _logits(model, ids)
        assert out.dtype == torch.bfloat16 and not torch.equal(out, base)
        assert torch.equal(_logits(model, ids), base)


def test_fingerprints_identify_the_steering_state(setup, built):
    model, tok, pairs, _ = setup
    prints = {name: s.fingerprint() for name, s in built.items()}
    assert len(set(prints.values())) == len(prints)  # every method differs
    again = build_baseline("pca", model, tok, pairs, seed=0)
    assert again.fingerprint() == prints["pca"]  # same pairs -> same vectors -> cached scores reusable
    again.flip_sign()
    assert again.fingerprint() != prints["pca"]
    assert build_baseline("random", model, tok, pairs, seed=5).fingerprint() != prints["random"]


def test_a_given_sweep_for_unit_vectors_is_in_mean_difference_units():
    """PCA vectors are unit length (repeng's); a sweep passed to them means mean-difference units, as for
    mean-diff vectors, so `--baseline-coeffs 0.5` pushes every vector by half a persona difference."""
    from innerpissa.baselines.vectors import SteeringVectors, VectorSteerer

    model = torch.nn.Linear(2, 2)
    unit = SteeringVectors({0: torch.tensor([1.0, 0.0])}, "pca", {"coeff_unit": 7.0})
    assert VectorSteerer(model, unit, coeffs=(-1.0, 0.0, 0.5)).default_coeffs == (-7.0, 0.0, 3.5)
    raw = SteeringVectors({0: torch.tensor([3.0, 0.0])}, "mean_diff")
    assert VectorSteerer(model, raw, coeffs=(-1.0, 0.0, 0.5)).default_coeffs == (-1.0, 0.0, 0.5)


def test_comparison_probes_give_per_item_scores(setup):
    """The probe `compare` calibrates every method with returns one score per item (so the evidence rule can
    flip a vector's sign), whose mean is the mean-only honesty probe's value."""
    from innerpissa.eval.calibration import concept_probe, load_probe
    from innerpissa.eval.choices import choice_ids
    from innerpissa.eval.harness import DEFAULT_SYSTEM, encode_prompts, score_encoded

    model, tok, _, _ = setup
    for concept in ("honesty", "sentiment"):
        name, fn = concept_probe(model, tok, concept)
        items = fn("You are a helpful assistant.")
        assert isinstance(items, torch.Tensor) and items.dim() == 1 and items.numel() >= 8, name
        if concept == "honesty":
            probe = load_probe()
            s = score_encoded(model, encode_prompts(tok, probe, DEFAULT_SYSTEM), choice_ids(tok), tok.pad_token_id)
            signed = (s["logp_yes"] - s["logp_no"]).to_numpy() * probe["sign"].to_numpy()
            assert items.numpy() == pytest.approx(signed, abs=1e-6)  # signed Yes-vs-No log-odds per item
