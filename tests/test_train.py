"""The trainer's promises: cached reference = fresh c = 0, batched +-c = separate forwards, the loss goes
down, resume = uninterrupted, seeds repeat, NaN stops cleanly, calibration fixes the sign."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from helpers import loss_and_grads, usage_error
from safetensors.torch import load_file

import innerpissa as ip
from innerpissa.anatomy import HiddenCapture
from innerpissa.train.config import preset
from innerpissa.train.forward import TrainForward
from innerpissa.train.reference import tail_width
from innerpissa.train.trainer import Trainer, TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, name="run", **kw):
    cfg = preset("tiny")
    cfg.out = tmp_path / name
    cfg.data.n_pairs = 20
    cfg.calibrate = False
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _trainer(cfg) -> Trainer:
    t = Trainer(cfg)
    t._setup_reference()
    with torch.no_grad():  # a trained-looking adapter so +1 and -1 differ clearly
        for p in t.params:
            p.normal_(std=0.2)
    return t


def _adapter_tensors(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter.safetensors"))


def test_cached_reference_equals_fresh_c0_forward(tmp_path):
    t = _trainer(_cfg(tmp_path))
    batch = t.collate([t.ds[i] for i in t.train_idx[:4]])
    width = tail_width(batch)
    cached_proj, cached_logp = t.ref.batch_values(batch, width)
    with torch.no_grad(), HiddenCapture(t.model, [t.ref.point]) as cap:
        fresh_proj, fresh_logp = t._run(TrainForward(t.model, batch, False, False), (0.0,), cap)[0.0]
    mask = torch.arange(width)[None, :] >= (width - batch.tail_len)[:, None]
    torch.testing.assert_close(fresh_proj, cached_proj, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fresh_logp[mask], cached_logp[mask], atol=1e-5, rtol=1e-5)


def test_batched_pm_and_cache_are_pure_speedups(tmp_path):
    t = _trainer(_cfg(tmp_path))
    batch = t.collate([t.ds[i] for i in t.train_idx[:4]])
    results = {}
    for batch_pm, cache in ((True, True), (False, True), (True, False)):
        t.cfg.batch_pm, t.cfg.cache_reference = batch_pm, cache
        results[(batch_pm, cache)] = loss_and_grads(t, batch)
    ref_total, ref_grads = results[(True, True)]
    assert ref_grads.abs().max() > 0
    for total, grads in results.values():
        torch.testing.assert_close(total, ref_total, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grads, ref_grads, atol=1e-5, rtol=1e-3)


def test_short_run_lowers_training_loss(tmp_path):
    cfg = _cfg(tmp_path, epochs=4, lr=3e-2)
    train(cfg)
    rows = [json.loads(x) for x in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["total"] for r in rows if "total" in r and "val_total" not in r]
    first, last = sum(steps[:3]) / 3, sum(steps[-3:]) / 3
    assert last < first, (first, last)
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["steps"] == len(steps)
    assert "val_ordered_fwd" in summary["final_validation"]
    meta = ip.read_adapter_meta(cfg.out / "adapter")
    assert meta["extra"]["training"]["train_pairs"] == summary["train_pairs"]


def test_same_seed_repeats_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full = _cfg(tmp_path, "full", epochs=2)
    again = _cfg(tmp_path, "again", epochs=2)
    train(full)
    train(again)
    a, b = _adapter_tensors(full.out), _adapter_tensors(again.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # interrupt in the middle of the second epoch, then resume
    cut = _cfg(tmp_path, "cut", epochs=2)
    calls = {"n": 0}
    original = Trainer.losses

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 7 and self.model.training is False and torch.is_grad_enabled():
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "losses", flaky)
    with pytest.raises(KeyboardInterrupt, match="resume"):
        train(cut)
    monkeypatch.setattr(Trainer, "losses", original)
    assert (cut.out / "checkpoint" / "state.pt").exists()
    cut.resume = True
    train(cut)
    c = _adapter_tensors(cut.out)
    for k in a:
        torch.testing.assert_close(c[k], a[k], atol=1e-6, rtol=1e-5)
    steps = [json.loads(x)["step"] for x in (cut.out / "metrics.jsonl").read_text().splitlines()
             if "total" in json.loads(x)]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), "metrics after resume repeat steps"


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, epochs=3)
    original = Trainer.losses
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        total, terms = original(self, batch)
        return (total * float("nan"), terms) if calls["n"] > 12 else (total, terms)

    monkeypatch.setattr(Trainer, "losses", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(cfg)
    state = torch.load(cfg.out / "checkpoint" / "state.pt", weights_only=True)
    assert all(torch.isfinite(p).all() for p in state["params"])
    assert state["state"]["epoch"] >= 1


def test_calibration_flips_when_plus_one_is_less_honest(tiny, monkeypatch):
    """Mode `always` (v0) through the probe the code really calls (`probe_items_fn`, via `concept_probe`): a
    probe that reads the current coefficient and scores +1 below -1 must flip the sign."""
    from innerpissa.eval import calibration as cal

    model, tok = tiny
    ip.attach(model, ip.AdapterConfig(r=4))
    before = [p.detach().clone() for p in ip.adapter_parameters(model)]
    layers = list(ip.adapter_layers(model).values())
    calls: list[float] = []

    def probe(slope: float):
        def make(*a, **k):
            def score(system: str) -> torch.Tensor:  # per-item scores of the model as it is now
                calls.append(float(layers[0].coeff))
                return slope * float(layers[0].coeff) + torch.linspace(-0.1, 0.1, 8)
            return score
        return make

    monkeypatch.setattr(cal, "probe_items_fn", probe(-1.0))
    result = cal.calibrate(model, tok, mode="always")
    assert sorted(calls) == [-1.0, 0.0, 1.0], "calibrate did not score through the patched probe"
    assert result["flipped"] and result["probe_effect"] == pytest.approx(2.0)
    assert result["probe_score"]["+1"] == pytest.approx(1.0) and result["probe_score"]["-1"] == pytest.approx(-1.0)
    assert all(torch.equal(p, -b) for p, b in zip(ip.adapter_parameters(model), before, strict=True))
    calls.clear()
    monkeypatch.setattr(cal, "probe_items_fn", probe(1.0))
    kept = cal.calibrate(model, tok, mode="always")
    assert len(calls) == 3 and not kept["flipped"] and kept["probe_effect"] == pytest.approx(2.0)
    assert all(torch.equal(p, -b) for p, b in zip(ip.adapter_parameters(model), before, strict=True))


def test_train_cli_errors_for_unknown_preset(capsys):
    from innerpissa.train.cli import read_start

    start, rest = read_start(["--lr", "1", "--preset", "tiny", "--help"])
    assert start.preset == "tiny" and rest == ["--lr", "1", "--help"]
    assert read_start(["--preset=qwen3-4b-gpu"])[0].config() == preset("qwen3-4b-gpu")
    with pytest.raises(SystemExit) as e:
        read_start(["--preset=huge"])
    msg = usage_error(e, capsys)
    assert "invalid choice 'huge' for argument '--preset'" in msg and "'smollm2-cpu'" in msg, msg


def test_compare_and_ablate_take_typed_training_options_on_the_preset(capsys):
    from innerpissa.cli import parse_command
    from innerpissa.methods import train_changes, train_config

    cmp = parse_command(["compare", "--preset", "tiny", "--train.loss.w-coh", "10", "--n-dilemmas", "6"])
    want = preset("tiny")
    want.loss.w_coh = 10.0
    assert cmp.train == want and cmp.n_dilemmas == 6 and cmp.batch_size == 16
    assert train_changes(cmp) == ["loss.w_coh: 40.0 -> 10.0"]
    cfg = train_config(cmp, seed=2, method="lora")
    assert (cfg.loss.w_coh, cfg.seed, cfg.adapter.seed, cfg.method, cfg.model) == (10.0, 2, 2, "lora", "tiny-random")
    ab = parse_command(["ablate", "--train.adapter.r", "32"])
    assert ab.train.adapter.r == 32 and ab.train.loss.w_coh == preset("smollm2-cpu").loss.w_coh
    with pytest.raises(SystemExit) as e:
        parse_command(["compare", "--train.loss.no-such-field", "1"])
    msg = usage_error(e, capsys)
    assert "Unrecognized options: --train.loss.no-such-field" in msg, msg


def test_variants_set_typed_fields_only():
    """Every variant applies to every preset; a misspelled field or a wrong-typed value is an error naming
    the fields that exist, never a new attribute nobody reads."""
    from innerpissa.train.variants import VARIANTS, apply_variant, set_fields

    for name in VARIANTS:
        for p in ("tiny", "smollm2-cpu"):
            apply_variant(name, preset(p))
    cfg = set_fields(preset("tiny"), {"loss.w_coh": 10.0, "adapter.r": 16})
    assert cfg.loss.w_coh == 10.0 and cfg.adapter.r == 16
    with pytest.raises(ValueError, match="loss has no field 'w_cohh'; valid: .*w_coh"):
        set_fields(preset("tiny"), {"loss.w_cohh": 1.0})
    with pytest.raises(ValueError, match="TrainConfig has no field 'lossx'"):
        set_fields(preset("tiny"), {"lossx.w_coh": 1.0})
    with pytest.raises(TypeError, match="'1' is not"):
        set_fields(preset("tiny"), {"loss.w_coh": "1"})
    with pytest.raises(TypeError, match="Literal"):
        set_fields(preset("tiny"), {"loss_target": "bogus"})


def test_summary_reports_the_validation_gate_and_warns_when_it_fails(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = train(cfg)
    val = result.summary["final_validation"]
    want = bool(val["val_sep-1"] < val["val_sep0"] < val["val_sep+1"])
    assert result.summary["val_separation_ordered"] is want
    gate_warnings = [w for w in rec if "validation gate is not met" in str(w.message)]
    assert bool(gate_warnings) is (not want)


def test_inner_loss_on_persona_free_rows(tmp_path, monkeypatch):
    """`--loss-inputs neutral` (issue 17 C3): the inner loss reads each pair's persona-free version (the neutral
    user turn and the pair's suffix, the same ids on both rows, its tail the part shared with both persona
    prompts) while the direction still comes from the persona pairs; a separation of two equal rows is refused."""
    from innerpissa.data.chat import chat_ids
    from innerpissa.errors import InputError
    from innerpissa.train.trainer import Trainer

    cfg = _cfg(tmp_path, loss_inputs="neutral", loss_target="shift_moved", epochs=1)
    cfg.loss.w_mono = 0.0
    t = Trainer(cfg)
    pairs = [t.ds[i] for i in range(len(t.ds))]
    assert len(t.loss_ds) == len(pairs) and t.loss_ds is not t.ds
    texts = []
    for row, persona in zip(t.loss_ds, pairs, strict=True):
        assert row.positive == row.negative and row.positive != persona.positive
        tail = row.positive[len(row.positive) - row.tail_len:]
        assert tail == persona.positive[len(persona.positive) - row.tail_len:]  # shared with both persona prompts
        assert tail == persona.negative[len(persona.negative) - row.tail_len:]
        assert row.tail_len >= cfg.direction.n_tokens
        texts.append(t.tok.decode(row.positive))
    assert all(cfg.outputs.user in x for x in texts)
    assert row.positive == chat_ids(t.tok, cfg.outputs.user, cfg.data.system, prefill=_group_of(t, row.index))
    # training reads those rows and only those (both rows of every pair equal), the direction from the personas
    seen = []
    original = Trainer.losses

    def spy(self, batch):
        seen.append(batch.input_ids.clone())
        return original(self, batch)

    t._setup_reference()
    assert float(t.ref.direction.norm()) > 0 and t.scale > 1e-6  # made from the persona pairs, not the equal rows
    # an adapter that does nothing moves nothing: the c = 0 reference is read on the same persona-free rows
    # (the persona rows' cached reference would leave their offset here)
    saved = [p.detach().clone() for p in t.params]
    with torch.no_grad():
        for p in t.params:
            p.zero_()
        batch = t.collate([t.loss_ds[i] for i in t.train_idx[:4]])
        _, terms = t.losses(batch)
        for p, v in zip(t.params, saved, strict=True):
            p.copy_(v)
    assert abs(float(terms["sep+1"])) < 1e-5 and abs(float(terms["sep-1"])) < 1e-5
    monkeypatch.setattr(Trainer, "losses", spy)
    result = t.fit()
    assert seen and all(torch.equal(ids[0::2], ids[1::2]) for ids in seen)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.summary["final_validation"].values()
               if isinstance(v, float))
    with pytest.raises(InputError, match="--loss-target shift_moved"):
        Trainer(_cfg(tmp_path, name="sep", loss_inputs="neutral"))


def _group_of(t, index):
    from innerpissa.data.config import make_pairs

    train_pairs, val_pairs = make_pairs(t.cfg.data, t.cfg.seed, t.tok)
    return (train_pairs + val_pairs)[index].group
