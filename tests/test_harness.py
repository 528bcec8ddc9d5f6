"""The scoring harness on the tiny random model: prompt layout, exactness of the chunked NLL and the Yes/No
read-out against the model's own logits, batched = unbatched, sweeps over steerers, caching, reports, CLI."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SHARED_DATA

from innerpissa.data.dilemmas import load_dilemmas, sample_dilemmas
from innerpissa.eval import harness as H
from innerpissa.eval.choices import choice_ids
from innerpissa.models import load_model, tiny_random_tokenizer
from innerpissa.steering import NoSteering, Steerer

DD = SHARED_DATA / "daily_dilemmas"
needs_data = pytest.mark.skipif(not DD.is_dir(), reason=f"DailyDilemmas data not found at {DD}")
AXES = ["Virtue/Truthfulness", "MFT/Care"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    if not DD.is_dir():
        pytest.skip(f"DailyDilemmas data not found at {DD}")
    return sample_dilemmas(load_dilemmas(DD), 3, seed=0)


class ScaleHead(Steerer):
    """A toy weight-space steerer: scales the output head by (1 + c/2) inside the context."""

    name = "scale-head"

    def __init__(self, model, version: str = "v1"):
        self.model, self.version = model, version

    def fingerprint(self) -> str:
        return f"scale-head-{self.version}"

    @contextmanager
    def at(self, c: float):
        w = self.model.get_output_embeddings().weight
        saved = w.detach().clone()
        w.data.mul_(1 + c / 2)
        try:
            yield
        finally:
            w.data.copy_(saved)


class Persona(Steerer):
    """A toy prompting steerer: the system message changes with c."""

    name = "persona"

    def system_prompt(self, c: float, default: str) -> str:
        return default if c == 0 else f"You are a {'honest' if c > 0 else 'dishonest'} person."

    @contextmanager
    def at(self, c: float):
        yield


def test_prompt_layout():
    """The one chat renderer, as the harness (prefilled answer), generation (open assistant turn) and the pairs
    (plain text) use it."""
    from innerpissa.data.chat import chat_ids, render_chat

    tok = tiny_random_tokenizer()
    text, templated = render_chat(tok, H.user_message("S.", "Do it"), "SYS", H.PREFILL)
    assert templated and text.endswith("<|im_start|>assistant\nMy choice:")
    assert text.count("<|im_start|>system") == 1 and "system\nSYS<|im_end|>" in text
    assert "Should you take this action?\nSituation: S.\nAction: Do it" in text
    text, _ = render_chat(tok, "U", "SYS")
    assert text.endswith("<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    assert chat_ids(tok, "U", "SYS") == tok(text, add_special_tokens=False)["input_ids"]
    assert render_chat(tok, "U", "SYS", "go", plain=True) == ("SYS\nU\ngo", False)
    tok.chat_template = None
    text, templated = render_chat(tok, "U", "SYS", H.PREFILL)
    assert not templated and text == "SYS\n\nUser: U\n\nAssistant: My choice:"
    assert render_chat(tok, "U", "SYS")[0] == "SYS\n\nUser: U\n\nAssistant:"


def test_score_batch_matches_the_models_own_logits(tiny, rows):
    model, tok = tiny
    enc = H.encode_prompts(tok, rows.iloc[:2], H.DEFAULT_SYSTEM)
    ids, mask, pos = H.pad_left(enc, tok.pad_token_id)
    got = H.score_batch(model, ids, mask, pos, choice_ids(tok), chunk=37)  # odd chunk: crosses rows
    ch = choice_ids(tok)
    for i, e in enumerate(enc):
        with torch.no_grad():
            logp = model(torch.tensor([e])).logits[0].float().log_softmax(-1)
        nll = -logp[:-1].gather(-1, torch.tensor(e[1:])[:, None]).mean()
        assert got["nll"][i].item() == pytest.approx(nll.item(), abs=1e-5)
        assert got["logp_yes"][i].item() == pytest.approx(torch.logsumexp(logp[-1, list(ch.yes)], 0).item(), abs=1e-5)
        assert got["logp_no"][i].item() == pytest.approx(torch.logsumexp(logp[-1, list(ch.no)], 0).item(), abs=1e-5)
        assert got["n_tokens"][i].item() == len(e) - 1


def test_fallback_path_equals_fast_path(tiny, rows, monkeypatch):
    model, tok = tiny
    enc = H.encode_prompts(tok, rows.iloc[:3], H.DEFAULT_SYSTEM)
    fast = H.score_encoded(model, enc, choice_ids(tok), tok.pad_token_id, batch_size=3)
    monkeypatch.setattr(H, "_fast_path", lambda m: None)
    slow = H.score_encoded(model, enc, choice_ids(tok), tok.pad_token_id, batch_size=3)
    np.testing.assert_allclose(fast.to_numpy(), slow.to_numpy(), atol=1e-5)


def test_batched_equals_unbatched(tiny, rows):
    model, tok = tiny
    one = H.evaluate(model, tok, rows, NoSteering(), [0.0], batch_size=1, axes=AXES, progress=False)
    many = H.evaluate(model, tok, rows, NoSteering(), [0.0], batch_size=4, axes=AXES, progress=False)
    assert len(one) == len(rows) and one["dilemma_idx"].tolist() == rows["dilemma_idx"].tolist()
    for col in ("logp_yes", "logp_no", "nll", "mass"):
        np.testing.assert_allclose(one[col], many[col], atol=1e-5, err_msg=col)
    assert (one["n_tokens"] == many["n_tokens"]).all()


def test_sweep_cache_and_system_prompt_steering(tiny, rows, tmp_path, monkeypatch):
    from innerpissa.eval import task as T
    from innerpissa.eval.settings import EvalSettings

    model, tok = tiny
    w0 = model.get_output_embeddings().weight.detach().clone()
    task = T.DilemmaTask(model, tok, rows, AXES, EvalSettings(), tmp_path)
    scored = []  # the task scores through harness.evaluate: record it, so the patch below is shown live
    real_evaluate = T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: (scored.append(1), real_evaluate(*a, **k))[1])
    res = task.score(ScaleHead(model), [-1.0, 0.0, 1.0], seed=7)
    assert scored, "DilemmaTask.score no longer calls task.evaluate: patch what it calls"
    monkeypatch.undo()
    assert torch.equal(model.get_output_embeddings().weight, w0)  # the steerer's state was undone
    assert sorted(res["coeff"].unique()) == [-1.0, 0.0, 1.0] and (res["seed"] == 7).all()
    assert {"label:Virtue/Truthfulness", "label:MFT/Care", "logodds_todo", "valid"} <= set(res.columns)
    base = H.evaluate(model, tok, rows, NoSteering(), [0.0], axes=AXES, progress=False)
    np.testing.assert_allclose(res[res.coeff == 0]["logp_yes"], base["logp_yes"], atol=1e-6)
    assert not np.allclose(res[res.coeff == 1]["logp_yes"], base["logp_yes"])
    assert len(list(tmp_path.glob("scale-head_*.json"))) == 1  # one entry for the sweep
    # a second run (another seed label too) reads the cache, every float exact, and never scores
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored")))
    pd.testing.assert_frame_equal(res, task.score(ScaleHead(model), [-1.0, 0.0, 1.0], seed=7), check_exact=True)
    assert (task.score(ScaleHead(model), [-1.0, 0.0, 1.0], seed=3)["seed"] == 3).all()
    monkeypatch.undo()
    assert len(task.score(ScaleHead(model, "v2"), [1.0])) == len(rows)  # another steerer state: scored
    assert len(list(tmp_path.glob("scale-head_*.json"))) == 2
    persona = H.evaluate(model, tok, rows, Persona(), [-1.0, 0.0], axes=AXES, progress=False)
    assert not np.allclose(persona[persona.coeff == -1]["nll"], persona[persona.coeff == 0]["nll"])


def test_report_and_cli_end_to_end(tiny, tmp_path):
    if not DD.is_dir():
        pytest.skip(f"DailyDilemmas data not found at {DD}")
    from innerpissa.cli_eval import EvalConfig, eval_main

    cfg = EvalConfig(model="tiny-random", n_dilemmas=4, out=tmp_path / "ev", data_dir=DD, n_boot=50,
                     batch_size=4, axes=tuple(AXES))
    paths = eval_main(cfg)
    for kind in ("rows", "coeffs", "methods", "summary", "plot", "examples", "sample"):
        assert paths[kind].is_file() and paths[kind].stat().st_size > 0, kind
    assert not [p for p in (tmp_path / "ev").iterdir() if p.name.startswith(".")]  # atomic: no temp files
    summary = paths["summary"].read_text()
    assert "Headline" in summary and "choice tokens: Yes = [" in summary
    rows_csv = pd.read_csv(paths["rows"])
    assert len(rows_csv) == 8 and set(rows_csv["method"]) == {"base"}
    assert "c = +0" in paths["examples"].read_text()


def test_cli_with_a_saved_adapter(tmp_path):
    if not DD.is_dir():
        pytest.skip(f"DailyDilemmas data not found at {DD}")
    from innerpissa.adapter import AdapterConfig, adapter_parameters, attach, save_adapter
    from innerpissa.cli_eval import EvalConfig, eval_main

    model, _ = load_model("tiny-random")
    attach(model, AdapterConfig(r=8, layers=(0, 1)))
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.05 * torch.randn_like(p))  # a visible steering effect
    save_adapter(model, tmp_path / "adapter")
    cfg = EvalConfig(model="tiny-random", adapter=tmp_path / "adapter", coeffs=(-1.0, 1.0), n_dilemmas=3,
                     out=tmp_path / "ev", data_dir=DD, n_boot=50, batch_size=4, axes=tuple(AXES), examples=False)
    paths = eval_main(cfg)
    res = pd.read_csv(paths["rows"])
    assert sorted(res["coeff"].unique()) == [-1.0, 0.0, 1.0] and set(res["method"]) == {"innerpissa"}
    base = H.evaluate(*load_model("tiny-random"), sample_dilemmas(load_dilemmas(DD), 3, seed=0), NoSteering(),
                      [0.0], axes=AXES, progress=False)
    np.testing.assert_allclose(res[res.coeff == 0]["logp_yes"], base["logp_yes"], atol=1e-5)  # c = 0 is the base
    assert not np.allclose(res[res.coeff == 1]["logp_yes"], base["logp_yes"], atol=1e-6)
