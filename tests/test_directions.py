"""Preference directions: planted directions are recovered; capture is mask-aware on a real (tiny) model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from innerpissa.data.pairs import PairCollator, PairDataset, build_pairs, collate_pairs
from innerpissa.models import load_model
from innerpissa.train.directions import (
    CapturePoint,
    HiddenCapture,
    capture_pairs,
    default_loss_point,
    direction_from_diffs,
    gather_last,
    project,
    svd_basis,
)


def _planted(n_pairs=200, n_tok=3, r=16, strong_noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(r, generator=g)
    d = d / d.norm()
    e = torch.randn(r, generator=g)
    e = e - (e @ d) * d
    e = e / e.norm()  # orthogonal nuisance axis
    a = 1 + 2 * torch.rand(n_pairs, 1, 1, generator=g)  # positive amounts along d
    signs = torch.randint(0, 2, (n_pairs, 1, 1), generator=g) * 2 - 1
    diffs = a * d + strong_noise * signs * e + 0.1 * torch.randn(n_pairs, n_tok, r, generator=g)
    return diffs, d, e


@pytest.mark.parametrize("method", ["mean", "pca", "pca_aligned"])
def test_planted_direction_recovered(method):
    diffs, d, _ = _planted()
    got = direction_from_diffs(diffs, method)
    assert got.shape == d.shape and not got.requires_grad
    assert got.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert (got @ d).item() > 0.99  # right axis and, for pca, sign aligned with the mean


def test_pca_sign_follows_mean():
    diffs, d, _ = _planted()
    assert (direction_from_diffs(-diffs, "pca") @ d).item() < -0.99


def test_pca_vs_pca_aligned_with_a_louder_nuisance_axis():
    diffs, d, e = _planted(strong_noise=5.0)  # +-5 along e (zero mean), +1..3 along d
    assert abs((direction_from_diffs(diffs, "pca") @ e).item()) > 0.95  # largest second moment
    assert (direction_from_diffs(diffs, "pca_aligned") @ d).item() > 0.95  # the one aligned with the mean
    assert (direction_from_diffs(diffs, "mean") @ d).item() > 0.95


def test_per_sample_and_errors():
    diffs, d, _ = _planted(n_pairs=10)
    per = direction_from_diffs(diffs, "per_sample")
    assert per.shape == (10, 16)
    assert torch.allclose(per.norm(dim=-1), torch.ones(10), atol=1e-5)
    assert torch.all(per @ d > 0.9)
    with pytest.raises(ValueError, match="unknown direction method"):
        direction_from_diffs(diffs, "median")


def test_gather_last_any_padding_side():
    h = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert gather_last(h, left, 2)[..., 0].tolist() == [[3.0, 4.0], [8.0, 9.0]]
    assert gather_last(h, right, 2)[..., 0].tolist() == [[1.0, 2.0], [8.0, 9.0]]
    with pytest.raises(ValueError, match="fewer than 4"):
        gather_last(h, left, 4)


def test_svd_basis_and_project():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4, bias=False)
    u, v = svd_basis(lin, "", "U"), svd_basis(lin, "", "V", rank=3)
    assert u.shape == (4, 4) and v.shape == (6, 3)
    assert torch.allclose(v.T @ v, torch.eye(3), atol=1e-5)
    x = torch.randn(2, 6)
    assert torch.allclose(project(lin(x), u) @ u.T, lin(x), atol=1e-5)  # full U is a rotation
    assert svd_basis(lin, "", "raw") is None and torch.equal(project(x, None), x)
    with pytest.raises(ValueError, match="U pairs with a module's output"):
        project(x, u)

    vs = svd_basis(lin, "", "VS")  # coordinates S * V^T x = U^T W x
    assert torch.allclose(project(x, vs), project(lin(x), u), atol=1e-5)
    with pytest.raises(ValueError, match="basis side"):
        svd_basis(lin, "", "W")

    class WithBuffers(nn.Module):  # an adapter layer exposes its frozen basis as buffers
        def __init__(self):
            super().__init__()
            self.register_buffer("U", torch.eye(4)[:, :2])
            self.register_buffer("S", torch.tensor([3.0, 2.0]))
            self.register_buffer("V", torch.eye(6)[:, :2])

    assert torch.equal(svd_basis(WithBuffers(), "", "U"), torch.eye(4)[:, :2])
    assert torch.equal(svd_basis(WithBuffers(), "", "VS"), torch.eye(6)[:, :2] * torch.tensor([3.0, 2.0]))


def test_capture_point_keys():
    assert CapturePoint("model.layers.1.mlp.up_proj", "input").key == "model.layers.1.mlp.up_proj:input"
    assert CapturePoint("hidden_states.2").is_hidden_states
    with pytest.raises(ValueError):
        CapturePoint("x", "middle")


# ------------------------------------------------------------------------------ the tiny model


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-random")
    personas = [("an honest", "a dishonest"), ("a truthful", "a deceptive")]
    suffixes = ["The weather is", "Most bread recipes start with flour and", "I think", "Here is a list of the"]
    pairs = build_pairs(tok, personas, suffixes)
    return model, tok, PairDataset(pairs, tok)


POINTS = [CapturePoint("model.layers.1"), CapturePoint("model.layers.1.mlp.up_proj", "input"),
          CapturePoint("model.layers.0.self_attn.o_proj"), CapturePoint("hidden_states.1")]


@torch.no_grad()
def test_left_padded_capture_equals_unpadded(tiny):
    model, tok, ds = tiny
    batch = collate_pairs([ds[i] for i in range(len(ds))], tok.pad_token_id)
    assert (batch.attention_mask == 0).any()  # rows really are padded
    with HiddenCapture(model, POINTS) as cap:
        cap.read_outputs(model(**batch.model_inputs(), output_hidden_states=True))
        padded = {p.key: gather_last(cap.hidden[p.key], batch.attention_mask, 3) for p in POINTS}
        for row in range(batch.input_ids.shape[0]):
            ids = batch.input_ids[row][batch.attention_mask[row].bool()][None]
            cap.read_outputs(model(input_ids=ids, output_hidden_states=True))
            for p in POINTS:
                alone = cap.hidden[p.key][:, -3:]
                assert torch.allclose(padded[p.key][row], alone[0], atol=1e-5), (p.key, row)
    assert not cap._handles  # hooks removed on exit


def _reference(model, ds, tok, method="mean", dims=None, n_tokens=3, basis_rank=8):
    from innerpissa.train.reference import build_reference

    loader = DataLoader(ds, batch_size=3, collate_fn=PairCollator(tok.pad_token_id))
    batches = list(loader)
    return build_reference(model, batches, [], len(ds), 0.8, "mlp.up_proj", "input", "V", basis_rank, method,
                           n_tokens, dims=dims)


def test_reference_direction_on_tiny_model(tiny):
    """The trainer's reference: direction from the pairs, s0 per pair, and a fresh forward reproduces it."""
    from innerpissa.train.reference import projections

    model, tok, ds = tiny
    point = default_loss_point(model)
    assert point == CapturePoint("model.layers.1.mlp.up_proj", "input")
    ref = _reference(model, ds, tok)
    assert ref.point == point and ref.direction.shape == (8,) and not ref.direction.requires_grad
    assert ref.sep0.shape == (len(ds),) and torch.isfinite(ref.sep0).all()
    assert ref.sep0.mean() > 0  # the mean direction is aligned with the mean difference by construction
    # the trainer's recomputation from a fresh forward matches the cached projections
    batch = collate_pairs([ds[i] for i in (4, 1)], tok.pad_token_id)
    with torch.no_grad(), HiddenCapture(model, [point]) as cap:
        model(**batch.model_inputs())
        proj = projections(cap.hidden[point.key], batch.attention_mask, ref.basis, ref.direction,
                           batch.pair_index[0::2].repeat_interleave(2), ref.n_tokens)
    assert torch.allclose(proj, ref.proj0[[4, 1]].reshape(-1), atol=1e-5)
    # the direction is the unit mean difference of the projected states, recomputed independently
    loader = DataLoader(ds, batch_size=3, collate_fn=PairCollator(tok.pad_token_id))
    captured, index = capture_pairs(model, loader, [point], 3)
    pos, neg = (project(x, ref.basis) for x in captured[point.key])
    mean = (pos - neg).mean((0, 1))
    assert torch.allclose(ref.direction, mean / mean.norm(), atol=1e-5)


def test_reference_per_sample_directions_and_short_tail(tiny):
    model, tok, ds = tiny
    ref = _reference(model, ds, tok, method="per_sample", n_tokens=2, basis_rank=None)
    assert ref.direction.shape == (len(ds), 64)
    assert torch.all(ref.sep0 > 0)  # each pair's own direction separates it positively
    with pytest.raises(ValueError, match="reaches past the shared suffix"):
        _reference(model, ds, tok, n_tokens=10_000)


def test_difference_dims_keep_the_most_of_the_mean_difference():
    from innerpissa.train.reference import difference_dims, direction_dims

    g = torch.Generator().manual_seed(0)
    states = torch.randn(40, 2, 3, 16, generator=g)
    states[:, 0, :, 5] += 2.0  # a coordinate where the personas differ a lot
    diff = (states[:, 0] - states[:, 1]).reshape(-1, 16).mean(0)
    k = 4
    by_diff = difference_dims(states, k)
    assert 5 in by_diff.tolist()
    assert set(by_diff.tolist()) == set(diff.abs().argsort(descending=True)[:k].tolist())
    kept = lambda idx: float(diff[idx].norm())  # noqa: E731
    assert kept(by_diff) >= kept(direction_dims(states, k, None)) - 1e-6
