"""Speed-ups that must not change a number: the block split, shared-prefix and frozen-prefix sweeps, the
training forward's shared prefix and frozen blocks, and steering in the model's dtype (tiny random model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, loss_and_grads

from innerpissa.adapter import AdapterConfig, attach, steer
from innerpissa.data.dilemmas import load_dilemmas, sample_dilemmas
from innerpissa.eval import harness as H
from innerpissa.eval.choices import choice_ids
from innerpissa.eval.sweep import SweepStats, prefix_groups, score_sweep
from innerpissa.models import load_model
from innerpissa.split import BlockSplit, common_prefix_len, first_adapted_block
from innerpissa.steering import AdapterSteerer
from innerpissa.train.config import preset
from innerpissa.train.forward import TrainForward
from innerpissa.train.trainer import Trainer

DD = SHARED_DATA / "daily_dilemmas"
pytestmark = pytest.mark.usefixtures("one_thread")
SCORES = ("logp_yes", "logp_no", "nll")


@pytest.fixture(scope="module")
def adapted():
    """The tiny model with a non-trivial adapter on its last block only (block 0 is frozen)."""
    model, tok = load_model("tiny-random")
    attach(model, AdapterConfig(r=4, layers=[-1]))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, tok


@pytest.fixture(scope="module")
def rows():
    if not DD.is_dir():
        pytest.skip(f"DailyDilemmas data not found at {DD}")
    return sample_dilemmas(load_dilemmas(DD), 5, seed=1)


def _padded(tok, texts):
    enc = [tok(t)["input_ids"] for t in texts]
    return H.pad_left(enc, tok.pad_token_id)


def test_common_prefix_leaves_each_row_a_token():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_len([[7, 8, 9]]) == 2
    groups = prefix_groups([[1, 2, 3], [1, 2, 4, 5], [9, 9]], ["a", "a", "b"])
    assert [(g.rows, g.prefix_len) for g in groups] == [((0, 1), 2), ((2,), 1)]


@pytest.mark.parametrize("k", [0, 1])
def test_block_split_equals_full_forward_on_left_padded_rows(adapted, k):
    model, tok = adapted
    ids, mask, pos = _padded(tok, ["a short one", "a much longer prompt with many more tokens in it", "mid size text"])
    with torch.no_grad(), steer(model, 0.7):
        full = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        split = BlockSplit(model, k)
        out = split.upper(split.lower(ids, mask, pos))
    real = mask.bool()
    torch.testing.assert_close(out[real], full[real], atol=1e-5, rtol=1e-5)


def test_first_adapted_block(adapted):
    assert first_adapted_block(adapted[0]) == adapted[0].config.num_hidden_layers - 1


@pytest.mark.parametrize(("shared", "frozen", "together"),
                         [(True, True, True), (True, True, False), (True, False, False), (False, True, False),
                          (False, False, True), (True, False, True), (False, True, True)])
def test_sweep_switches_give_todays_scores(adapted, rows, shared, frozen, together):
    model, tok = adapted
    st = AdapterSteerer(model)
    kw = {"coeffs": [-1.0, 0.0, 0.5], "batch_size": 4, "progress": False, "axes": []}  # 2 dilemmas a batch
    base = H.evaluate(model, tok, rows, st, shared_prefix=False, frozen_prefix=False, batch_coeffs=False, **kw)
    fast = H.evaluate(model, tok, rows, st, shared_prefix=shared, frozen_prefix=frozen, batch_coeffs=together,
                      **kw)
    for c in SCORES:
        assert np.abs(fast[c] - base[c]).max() <= 1e-4, c
    assert (fast["n_tokens"] == base["n_tokens"]).all()
    # the coefficients really differ, so equality is not trivial
    assert np.abs(base.loc[base.coeff == -1.0, "logp_yes"].to_numpy()
                  - base.loc[base.coeff == 0.0, "logp_yes"].to_numpy()).max() > 1e-3


def test_shared_prefix_equals_model_logits_with_uneven_groups(adapted):
    """Groups of one, two and three rows with different tail lengths, against the model's own logits."""
    model, tok = adapted
    base = "System: be brief.\nUser: Should you take this action? Situation: a long shared situation text"
    texts = [base + " Action: yes", base + " Action: a much longer action to take", "other prompt entirely",
             base + "!! Action: x", base + "!! Action: y z", base + "!! Action: w"]
    enc = [tok(t)["input_ids"] for t in texts]
    choices = choice_ids(tok)
    stats = SweepStats()
    with torch.no_grad():
        res = score_sweep(model, enc, choices, tok.pad_token_id, [0.3], lambda c: steer(model, c),
                          first_block=1, group_keys=[0, 0, 1, 2, 2, 2], batch_size=4, stats=stats)[0.3]
        for i, e in enumerate(enc):
            with steer(model, 0.3):
                logits = model(input_ids=torch.tensor([e])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            nll = -logp[:-1].gather(-1, torch.tensor(e[1:])[:, None]).mean()
            assert abs(res["nll"][i] - float(nll)) < 1e-4
            assert abs(res["logp_yes"][i] - float(torch.logsumexp(logp[-1, choices.yes], 0))) < 1e-4
    assert stats.peak_bytes > 0


# ------------------------------------------------------------------------------------------------ training


def _trainer(tmp_path, **kw) -> Trainer:
    cfg = preset("tiny")
    cfg.out, cfg.calibrate = tmp_path / "run", False
    cfg.data.n_pairs = 20
    cfg.adapter.layers = [-1]
    for k, v in kw.items():
        setattr(cfg, k, v)
    t = Trainer(cfg)
    t._setup_reference()
    with torch.no_grad():
        for p in t.params:
            p.normal_(std=0.2)
    return t


def _count_tokens(block) -> tuple[list[int], callable]:
    """Wrap `block.forward` to count the tokens (rows x columns) it sees; returns (counts, undo).
    Counted by wrapping forward: a hook would (rightly) move the split below the block."""
    seen: list[int] = []
    run = block.forward
    block.forward = lambda h, *a, **kw: (seen.append(h.shape[0] * h.shape[1]), run(h, *a, **kw))[1]

    def undo():
        del block.forward
    return seen, undo


@pytest.mark.parametrize(("batch_pm", "cache"), [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize(("shared", "frozen"), [(True, True), (True, False), (False, True)])
def test_training_forward_is_a_pure_speedup(tmp_path, batch_pm, cache, shared, frozen):
    """Loss and gradients with the shared prefix and/or frozen blocks equal a plain whole-row forward's."""
    t = _trainer(tmp_path, batch_pm=batch_pm, cache_reference=cache)
    batch = t.collate([t.ds[i] for i in t.train_idx[:4]])
    assert (batch.attention_mask == 0).any(), "the test needs left-padded rows"
    seen, undo = _count_tokens(t.model.get_decoder().layers[0])
    t.cfg.shared_prefix, t.cfg.frozen_prefix = False, False
    ref = loss_and_grads(t, batch)
    plain, seen[:] = sum(seen), []
    t.cfg.shared_prefix, t.cfg.frozen_prefix = shared, frozen
    fast = loss_and_grads(t, batch)
    undo()
    am = batch.attention_mask.bool()
    seqs = [batch.input_ids[i][am[i]].tolist() for i in range(len(am))]
    p = common_prefix_len(seqs)
    assert p >= 10, "the built-in pairs share their chat template and instruction"
    assert sum(seen) < plain  # block 0 saw fewer tokens
    if frozen:  # block 0 (below the adapted block) ran once for the batch
        fwd = TrainForward(t.model, batch, shared, frozen)
        assert len(seen) == (2 if shared else 1) and fwd.split.k == 1
    assert ref[1].abs().max() > 0
    torch.testing.assert_close(fast[0], ref[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast[1], ref[1], atol=1e-5, rtol=1e-3)


def test_training_forward_layout(tmp_path):
    """The shared prefix is one row; each remainder keeps its tail and the token before it, positions go on
    from the prefix, and a capture point in a lower block moves the split below it."""
    t = _trainer(tmp_path)
    batch = t.collate([t.ds[i] for i in t.train_idx[:4]])
    fwd = TrainForward(t.model, batch)
    p = fwd.prefix_len
    am = batch.attention_mask.bool()
    for i in range(batch.input_ids.shape[0]):
        own = fwd.ids[i][fwd.own_mask[i].bool()].tolist()
        assert fwd.prefix_ids[0].tolist() + own == batch.input_ids[i][am[i]].tolist()
        assert len(own) >= int(batch.tail_len[i]) + 1
        assert fwd.pos[i][fwd.own_mask[i].bool()].tolist() == list(range(p, p + len(own)))
    assert fwd.split.k == 1
    h = t.model.get_decoder().layers[0].mlp.register_forward_hook(lambda *a: None)
    try:
        assert TrainForward(t.model, batch).split.k == 0
    finally:
        h.remove()
    assert TrainForward(t.model, batch, shared_prefix=False, frozen=False).split is None


# ------------------------------------------------------------------------------------------------ dtype


def test_bf16_steering_runs_in_model_dtype_with_exact_c0():
    from innerpissa.adapter.layer import InnerPiSSALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(32, 24).to(torch.bfloat16)
    layer = InnerPiSSALinear(base, AdapterConfig(r=8, svd="full"), seed=0)  # U, S, V stay float32
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            p.normal_(std=0.3)
    x = torch.randn(3, 5, 32, dtype=torch.bfloat16)
    want0 = base(x)
    with torch.no_grad():
        assert torch.equal(layer(x), want0)  # c = 0: the base layer, bit for bit
        layer.coeff = torch.tensor([0.0, 1.0, -1.0])
        mixed = layer(x)
        assert torch.equal(mixed[0], want0[0])  # a zero coefficient inside a batch is exact too
        layer.coeff = 1.0
        y1 = layer(x)
        cached = layer._basis_cache[1]
        layer(x)
        assert layer._basis_cache[1] is cached  # U and V were cast once, not per call
    assert y1.dtype == torch.bfloat16
    # against the delta computed in float32 from the same numbers: bf16 rounding only
    ref = want0.float() + (x.float() @ layer.V @ layer.mixing(1.0).detach() @ layer.U.T)
    assert (y1.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    torch.testing.assert_close(mixed[1], y1[1], atol=0.05, rtol=0.05)
    # gradients still reach the float32 parameters through the casts
    layer.coeff = 1.0
    layer(x).float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters(recurse=False))


class _EmbeddingScale(AdapterSteerer):
    """A steerer acting at the embeddings (first steered block 0): nothing may be computed outside `at(c)`."""

    name = "emb-scale"
    per_row_coeffs = False

    def at(self, c):
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            h = self.model.get_input_embeddings().register_forward_hook(lambda _m, _a, out: out * (1 + c / 2))
            try:
                yield
            finally:
                h.remove()
        return ctx()

    def first_steered_block(self, model) -> int:
        return 0


def test_sweep_with_an_embedding_steerer_matches_plain_scoring(adapted, rows):
    model, tok = adapted
    st = _EmbeddingScale(model)
    kw = {"coeffs": [-1.0, 1.0], "batch_size": 4, "progress": False, "axes": []}
    base = H.evaluate(model, tok, rows, st, shared_prefix=False, frozen_prefix=False, batch_coeffs=False, **kw)
    fast = H.evaluate(model, tok, rows, st, **kw)
    for c in SCORES:
        assert np.abs(fast[c] - base[c]).max() <= 1e-4, c
    assert np.abs(base.loc[base.coeff == -1.0, "nll"].to_numpy() - base.loc[base.coeff == 1.0, "nll"].to_numpy()).max() > 1e-3


def test_sweep_with_a_per_row_vector_steerer_matches_plain_scoring(adapted, rows):
    """Vectors take per-row coefficients too, so the one-pass sweep batches them: same scores as one c at a time."""
    from innerpissa.baselines.vectors import SteeringVectors, VectorSteerer

    model, tok = adapted
    d = model.config.hidden_size
    st = VectorSteerer(model, SteeringVectors({1: torch.randn(d, generator=torch.Generator().manual_seed(3))},
                                              "mean_diff"))
    st.flip_sign()
    assert st.per_row_coeffs
    kw = {"coeffs": [-2.0, 0.0, 1.0], "batch_size": 4, "progress": False, "axes": []}
    base = H.evaluate(model, tok, rows, st, shared_prefix=False, frozen_prefix=False, batch_coeffs=False, **kw)
    fast = H.evaluate(model, tok, rows, st, **kw)
    for c in SCORES:
        assert np.abs(fast[c] - base[c]).max() <= 1e-4, c
    assert np.abs(base.loc[base.coeff == -2.0, "nll"].to_numpy() - base.loc[base.coeff == 1.0, "nll"].to_numpy()).max() > 1e-3
