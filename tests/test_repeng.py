"""Our PCA baseline is repeng 0.4.0's `ControlVector.train`: parity with vectors computed by repeng itself
(tests/fixtures/repeng_0.4.0_tiny.json, made by tests/fixtures/make_repeng_fixture.py), the direction maths
against an independent eigen-decomposition, and the `repeng_external` baseline (the real package in its own
virtualenv) when $INNERPISSA_REPENG_PYTHON points to one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from innerpissa.baselines import build_baseline, train_vectors
from innerpissa.baselines.external import REPENG_PYTHON_ENV, repeng_python
from innerpissa.baselines.registry import available_baselines
from innerpissa.baselines.vectors import VectorSteerer, repeng_direction
from innerpissa.data.pairs import ContrastivePair, pairs_from_sources
from innerpissa.models import load_model, tiny_random_model

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_FILE = FIXTURES / "repeng_0.4.0_tiny.json"


def _fixture_helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_repeng_fixture", FIXTURES / "make_repeng_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fixture():
    data = json.loads(FIXTURE_FILE.read_text(encoding="utf-8"))
    helpers = _fixture_helpers()
    model, tok = tiny_random_model(**data["model"]["kwargs"])
    regen = "regenerate it with tests/fixtures/make_repeng_fixture.py"
    assert helpers.weights_digest(model) == data["model"]["weights_sha1"], f"tiny model weights changed; {regen}"
    assert helpers.token_digest(tok, data["pairs"]) == data["token_ids_sha1"], f"tokenizer changed; {regen}"
    pairs = [ContrastivePair(p, n) for p, n in data["pairs"]]
    return data, model, tok, pairs


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


@pytest.mark.parametrize(("method", "center"), [("pca_diff", True), ("pca_center", False)])
@pytest.mark.parametrize("batch_size", [3, 16])
def test_pca_equals_repeng_fixture(fixture, method, center, batch_size):
    data, model, tok, pairs = fixture
    ours = train_vectors(model, tok, pairs, "pca", layers=data["layers"], center=center, batch_size=batch_size)
    theirs = {int(k): torch.tensor(v) for k, v in data["vectors"][method].items()}
    assert sorted(ours.vectors) == sorted(theirs) == data["layers"]
    for layer, v in theirs.items():
        assert _cos(ours.vectors[layer], v) >= 0.9999, (method, layer)  # same axis and same sign
        assert ours.vectors[layer].norm().item() == pytest.approx(v.norm().item(), abs=1e-5)  # both unit


def test_v0_style_is_kept_and_is_not_repeng(fixture):
    data, model, tok, pairs = fixture
    v0 = train_vectors(model, tok, pairs, "pca", layers=data["layers"], style="v0")
    assert v0.meta["style"] == "v0" and v0.meta["n_tokens"] == 4
    for layer in data["layers"]:
        stats = v0.meta["stats"][str(layer)]
        assert v0.vectors[layer].norm().item() == pytest.approx(stats["mean_diff_norm"], rel=1e-5)
    cos = [_cos(v0.vectors[k], torch.tensor(v)) for k, v in
           ((int(k), v) for k, v in data["vectors"]["pca_diff"].items())]
    assert min(cos) < 0.99  # a different vector: the reason the default changed
    with pytest.raises(ValueError, match="last token only"):
        train_vectors(model, tok, pairs, "pca", n_tokens=4)
    with pytest.raises(ValueError, match="unknown PCA style"):
        train_vectors(model, tok, pairs, "pca", style="repe")


def test_repeng_direction_against_an_eigendecomposition():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    neg = torch.randn(40, 16, generator=g)
    amount = 1 + 2 * torch.rand(40, 1, generator=g)
    pos = neg + amount * d + 0.1 * torch.randn(40, 16, generator=g)
    diff = (pos - neg).double().numpy()
    for center, x in ((True, diff - diff.mean(0)), (False, diff)):
        _, vecs = np.linalg.eigh(x.T @ x)
        top = torch.from_numpy(vecs[:, -1]).float()
        v = repeng_direction(pos, neg, center)
        assert v.norm().item() == pytest.approx(1.0, abs=1e-6)
        assert abs(_cos(v, top)) >= 0.99999  # the top principal axis
        assert (pos @ v > neg @ v).float().mean() > 0.5  # repeng's vote: positives project higher
        assert torch.allclose(repeng_direction(neg, pos, center), -v, atol=1e-6)  # swapping sides negates it
    # a tie in the vote keeps sklearn's convention: the largest entry positive
    p, n = torch.tensor([[2.0, 0.5], [-2.0, -0.3]]), torch.zeros(2, 2)
    v = repeng_direction(p, n, center=False)
    assert v[v.abs().argmax()] > 0
    with pytest.raises(ValueError, match="must both be"):
        repeng_direction(p, n[:1], True)


def test_unit_vectors_scale_their_sweep_and_calibration_push():
    model, tok = load_model("tiny-random")
    pairs = pairs_from_sources(tok, max_pairs=6)
    sv = train_vectors(model, tok, pairs, "pca", layers=[0, 1])
    unit = sv.meta["coeff_unit"]
    means = [sv.meta["stats"][k]["mean_diff_norm"] for k in ("0", "1")]
    assert unit == pytest.approx(sum(means) / 2) and unit > 0
    steerer = VectorSteerer(model, sv)
    assert steerer.calibration_coeff == pytest.approx(unit)
    assert max(steerer.default_coeffs) == pytest.approx(8 * unit, rel=1e-2) and 0.0 in steerer.default_coeffs
    mean_diff = VectorSteerer(model, train_vectors(model, tok, pairs, "mean_diff", layers=[0, 1]))
    assert mean_diff.calibration_coeff == 1.0  # already in mean-difference units


def test_missing_repeng_python_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.delenv(REPENG_PYTHON_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=f"{REPENG_PYTHON_ENV}.*create one with: python3 -m venv"):
        repeng_python()
    assert "repeng_external" not in available_baselines()
    monkeypatch.setenv(REPENG_PYTHON_ENV, str(tmp_path / "nope" / "python"))
    model, tok = load_model("tiny-random")
    with pytest.raises(FileNotFoundError, match="does not exist.*create it with"):
        build_baseline("repeng_external", model, tok, pairs_from_sources(tok, max_pairs=2), workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # failed before writing a model folder


def _repeng_python_or_skip() -> str:
    path = os.environ.get(REPENG_PYTHON_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"${REPENG_PYTHON_ENV} does not point to a Python with repeng 0.4.0 (see REPENG_VENV_HINT)")
    return path


def test_repeng_external_matches_our_pca_and_steers_the_same(tmp_path):
    _repeng_python_or_skip()
    model, tok = load_model("tiny-random")
    pairs = pairs_from_sources(tok, max_pairs=8)
    ours = build_baseline("pca", model, tok, pairs, layers=[0, 1])
    theirs = build_baseline("repeng_external", model, tok, pairs, layers=[0, 1], batch_size=6, workdir=tmp_path)
    assert theirs.name == "repeng_external" and theirs.vectors.meta["versions"]["repeng"] == "0.4.0"
    for layer in (0, 1):
        a, b = ours.vectors.vectors[layer], theirs.vectors.vectors[layer]
        assert _cos(a, b) >= 0.9999 and a.norm().item() == pytest.approx(b.norm().item(), abs=1e-5)
    assert theirs.vectors.meta["coeff_unit"] == pytest.approx(ours.vectors.meta["coeff_unit"], rel=1e-4)
    assert theirs.default_coeffs == ours.default_coeffs
    ids = tok(["The weather today is mild"], return_tensors="pt")
    with torch.no_grad():
        base = model(**ids).logits
        with ours.at(3.0):
            a = model(**ids).logits
        with theirs.at(3.0):
            b = model(**ids).logits
    assert not torch.allclose(a, base, atol=1e-4) and torch.allclose(a, b, atol=1e-4)
    assert list(tmp_path.iterdir()) == []  # the model folder is removed
