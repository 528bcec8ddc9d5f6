"""What the trainer's loss reads, against an independent computation on the same model (issue 21, item 1).

`Trainer.losses` hands the loss (`combine`) the separations s(c), the reference s0, the tail log-probs at
c = +1 and -1, the cached c = 0 log-probs and the token mask. Here each of them is recomputed without any
library helper: every row alone and unpadded through `model(input_ids=...)` inside `ip.steer(model, c)`,
`log_softmax` of its logits gathered at the next token by hand, and the loss point's hidden state captured by
a forward hook of this file projected on the trainer's frozen basis and direction. Every layout switch of the
training forward (shared prefix, frozen blocks, batched +-c, cached reference, and all their combinations)
must give those numbers on left-padded rows of different lengths, with a random adapter whose +-1 deltas are
far from zero. The speed-up tests in test_speed.py compare the fast layouts with a plain one through the same
`tail_logprobs`; these do not share it, so an off-by-one in the shared code fails here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from helpers import randomize

import innerpissa as ip
from innerpissa.split import common_prefix_len, first_adapted_block
from innerpissa.train import trainer as trainer_module
from innerpissa.train.config import preset
from innerpissa.train.forward import TrainForward
from innerpissa.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

COEFFS = (1.0, -1.0, 0.0)
ATOL = 2e-4  # float32 forwards summed in another order; a one-token shift is ~0.5 nats on this model


@dataclass(frozen=True)
class Setup:
    """A trainer configuration whose loss inputs are checked (the id names what it exercises)."""

    name: str
    layers: tuple[int, ...]  # adapted blocks of the 2-block model; (-1,) leaves block 0 frozen
    depth: float  # loss point depth: 0.8 -> block 1 (adapted), 0.0 -> block 0 (below the adapter)
    module: str  # loss point module ('' = the block's output)
    basis: str
    target: str


SETUPS = [
    Setup("up_proj-input-V-block1", (-1,), 0.8, "mlp.up_proj", "V", "separation"),
    Setup("point-below-adapter", (-1,), 0.0, "mlp.up_proj", "V", "shift"),
    Setup("block-output-raw-all-blocks", (0, 1), 0.8, "", "raw", "shift_moved"),
]


def _trainer(tmp_path, s: Setup) -> Trainer:
    cfg = preset("tiny")
    cfg.out, cfg.calibrate = tmp_path / "run", False
    cfg.data.n_pairs = 24
    cfg.adapter.layers = s.layers
    cfg.direction.depth, cfg.direction.module, cfg.direction.basis = s.depth, s.module, s.basis
    if s.module == "":
        cfg.direction.where = "output"
    cfg.loss_target = s.target
    t = Trainer(cfg)
    t._setup_reference()
    randomize(t.params, std=0.3, seed=3)  # a trained-looking adapter: +1, -1 and 0 differ clearly
    return t


def _spread_batch(t: Trainer):
    """Four training pairs of the most different lengths (short and long rows, so real left padding)."""
    by_len = sorted(t.train_idx, key=lambda i: len(t.ds[i].positive) + len(t.ds[i].negative))
    batch = t.collate([t.ds[i] for i in (by_len[0], by_len[1], by_len[-2], by_len[-1])])
    lengths = batch.attention_mask.sum(1)
    assert (batch.attention_mask == 0).any() and len(set(lengths.tolist())) >= 3, "rows need different lengths"
    assert len(set(batch.tail_len.tolist())) >= 2, "pairs need tails of different lengths"
    return batch


# ------------------------------------------------------------------------------------------ independent


def _capture(model, module: str, where: str):
    """A forward hook of this file on `module` (its input or output): returns (store, handle)."""
    store: dict[str, torch.Tensor] = {}
    mod = model.get_submodule(module)
    if where == "input":
        def pre(_m, args, kwargs):
            store["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
        return store, mod.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_m, _args, out):
        store["h"] = (out[0] if isinstance(out, tuple | list) else out).detach()
    return store, mod.register_forward_hook(post)


@torch.no_grad()
def independent(t: Trainer, batch, c: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per row of `batch` at coefficient c: (log p(token_t | tokens_<t) of every token t >= 1 of the row alone
    [L - 1], in float64; the row's projection on the frozen direction, mean over its last n tokens)."""
    ref = t.ref
    store, handle = _capture(t.model, ref.point.module, ref.point.where)
    logps, projs = [], []
    try:
        for i in range(batch.input_ids.shape[0]):
            tokens = batch.input_ids[i][batch.attention_mask[i].bool()]
            with ip.steer(t.model, c):
                logits = t.model(input_ids=tokens[None]).logits[0]
            lp = torch.log_softmax(logits.double(), -1)
            logps.append(lp[:-1].gather(-1, tokens[1:, None])[:, 0])  # row t - 1 predicts token t
            h = store["h"][0, -ref.n_tokens:].double()  # the last n tokens of the unpadded row
            coords = h if ref.basis is None else h @ ref.basis.double()
            d = ref.direction.double()
            if d.dim() == 2:  # per-pair directions
                d = d[int(batch.pair_index[i])]
            projs.append((coords @ d).mean())
    finally:
        handle.remove()
    return logps, torch.stack(projs)


def tail_columns(batch, width: int, i: int) -> range:
    """The columns of the trainer's [rows, width] log-probs that hold row i's shared tail (right-aligned)."""
    return range(width - int(batch.tail_len[i]), width)


def expected_stat(target: str, proj: torch.Tensor, proj0: torch.Tensor) -> torch.Tensor:
    """The loss target per pair from per-row projections [pos, neg, pos, neg, ...], written out here."""
    pos, neg = proj[0::2], proj[1::2]
    if target == "separation":
        return pos - neg
    shift = (pos + neg) / 2
    if target == "shift":
        return shift
    assert target == "shift_moved"
    return shift - (proj0[0::2] + proj0[1::2]) / 2


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", params=SETUPS, ids=lambda s: s.name)
def case(request, tmp_path_factory):
    """A trainer, a batch, and the independent values at c = +1, -1, 0 (computed once per setup)."""
    t = _trainer(tmp_path_factory.mktemp("reads"), request.param)
    assert first_adapted_block(t.model) == (0 if 0 in request.param.layers else 1)
    batch = _spread_batch(t)
    want = {c: independent(t, batch, c) for c in COEFFS}
    # the adapter moves the numbers far beyond the tolerance, so agreement below is not trivial
    moved = max((a - b).abs().max() for a, b in zip(want[1.0][0], want[0.0][0], strict=True))
    assert moved > 0.05, moved
    if request.param.depth > 0:
        assert (want[1.0][1] - want[-1.0][1]).abs().max() > 1e-3
    return request.param, t, batch, want


def loss_inputs(t: Trainer, batch, monkeypatch) -> dict:
    """Run `t.losses(batch)` and return what it passed to the loss (`combine`): s, s0, logp, logp_ref, mask."""
    seen: dict = {}
    real = trainer_module.combine

    def spy(cfg, s, s_0, logp, logp_ref, mask, *args, **kwargs):
        seen.update(s=s, s0=s_0, logp=logp, logp_ref=logp_ref, mask=mask)
        return real(cfg, s, s_0, logp, logp_ref, mask, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "combine", spy)
    total, terms = t.losses(batch)
    monkeypatch.undo()
    assert seen, "Trainer.losses no longer calls trainer.combine: point this spy at the loss it calls"
    assert torch.isfinite(total)
    return seen


LAYOUTS = list(itertools.product([True, False], repeat=4))


@pytest.mark.parametrize(("shared", "frozen", "batch_pm", "cache"), LAYOUTS,
                         ids=lambda v: "on" if v else "off")
def test_loss_reads_the_models_own_logprobs_and_states(case, shared, frozen, batch_pm, cache, monkeypatch):
    setup, t, batch, want = case
    t.cfg.shared_prefix, t.cfg.frozen_prefix, t.cfg.batch_pm, t.cfg.cache_reference = shared, frozen, batch_pm, cache
    got = loss_inputs(t, batch, monkeypatch)
    width = int(batch.tail_len.max())
    rows = batch.input_ids.shape[0]
    assert sorted(got["logp"]) == [-1.0, 1.0] and sorted(got["s"]) == [-1.0, 1.0]

    # log-probs at c = +1 and -1 (live) and the c = 0 reference (cached or a third forward), per tail token
    for c, logp in [*got["logp"].items(), (0.0, got["logp_ref"])]:
        assert logp.shape == (rows, width), (c, logp.shape)
        for i in range(rows):
            cols = tail_columns(batch, width, i)
            mine = want[c][0][i][-len(cols):]  # the row's last tail_len tokens
            torch.testing.assert_close(logp[i, cols.start:].double(), mine, atol=ATOL, rtol=0,
                                       msg=lambda m, c=c, i=i: f"c={c:+g} row {i}: {m}")

    # the mask the gap and coherence terms read: the last mask_tokens columns of each row's tail
    n = t.cfg.loss.mask_tokens
    for i in range(rows):
        keep = int(batch.tail_len[i]) if n <= 0 else min(n, int(batch.tail_len[i]))
        assert got["mask"][i].tolist() == [False] * (width - keep) + [True] * keep

    # separations (or shifts) at +-1 and the reference, from the independent hidden-state capture
    proj0 = want[0.0][1]
    torch.testing.assert_close(got["s0"].double(), torch.zeros(rows // 2, dtype=torch.float64)
                               if setup.target == "shift_moved" else expected_stat(setup.target, proj0, proj0),
                               atol=ATOL, rtol=1e-4)
    for c in (1.0, -1.0):
        torch.testing.assert_close(got["s"][c].double(), expected_stat(setup.target, want[c][1], proj0),
                                   atol=ATOL, rtol=1e-4, msg=lambda m, c=c: f"s({c:+g}): {m}")


@pytest.mark.parametrize(("shared", "frozen"), [(True, True), (True, False), (False, True), (False, False)])
def test_train_forward_run_equals_the_models_logprobs_at_any_coefficients(case, shared, frozen):
    """`TrainForward.run` itself (the public forward): three coefficients in one run, and None (the model as
    it is) once the rows have been laid out; every tail log-prob equals the independent one."""
    setup, t, batch, want = case
    width = int(batch.tail_len.max())
    rows = batch.input_ids.shape[0]
    fwd = TrainForward(t.model, batch, shared, frozen)
    with torch.no_grad():
        runs = {cs: fwd.run(cs) for cs in [(1.0, 0.0, -1.0), (-1.0,), None]}
    for cs, out in runs.items():
        cs_list = (0.0,) if cs is None else cs
        assert out.shape == (len(cs_list) * rows, width)
        for k, c in enumerate(cs_list):
            for i in range(rows):
                cols = tail_columns(batch, width, i)
                torch.testing.assert_close(out[k * rows + i, cols.start:].double(), want[c][0][i][-len(cols):],
                                           atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------ the prefix edge


@torch.no_grad()
def _row_logprobs(model, batch, c: float) -> list[torch.Tensor]:
    """log p(token_t | tokens_<t) for t >= 1 of each row alone, unpadded, at coefficient c (float64)."""
    out = []
    for i in range(batch.input_ids.shape[0]):
        tokens = batch.input_ids[i][batch.attention_mask[i].bool()]
        with ip.steer(model, c):
            lp = torch.log_softmax(model(input_ids=tokens[None]).logits[0].double(), -1)
        out.append(lp[:-1].gather(-1, tokens[1:, None])[:, 0])
    return out


def test_shared_prefix_stops_before_every_rows_tail(tiny):
    """Hand-made rows whose common prefix (5 6 7) reaches the token before one row's tail: the prefix is cut to
    2 tokens (exactly MIN_PREFIX, so still shared), every row keeps the token before its tail, and the tail
    log-probs at +1, -1 and 0 are the model's own, with an adapter on every block (so the prefix's keys depend
    on c)."""
    from innerpissa.data.batching import TokenizedPair, collate_pairs
    from innerpissa.train.forward import MIN_PREFIX

    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4, layers=(0, 1)))
    assert first_adapted_block(model) == 0
    randomize(ip.adapter_parameters(model), std=0.3, seed=5)
    pairs = [TokenizedPair(0, [5, 6, 7, 9, 10, 11], [5, 6, 7, 10, 11], 2),  # neg: tail 10 11 right after 5 6 7
             TokenizedPair(1, [5, 6, 7, 8, 12, 13, 14], [5, 6, 7, 20, 12, 13, 14], 3)]
    batch = collate_pairs(pairs, 0)
    width = 3
    want = {c: _row_logprobs(model, batch, c) for c in (1.0, -1.0, 0.0)}
    assert max((a - b).abs().max() for a, b in zip(want[1.0], want[-1.0], strict=True)) > 0.05
    for shared, frozen in ((True, True), (True, False), (False, True), (False, False)):
        fwd = TrainForward(model, batch, shared, frozen)
        assert fwd.prefix_len == (MIN_PREFIX if shared else 0)
        with torch.no_grad():
            out = fwd.run((1.0, -1.0, 0.0))
        for k, c in enumerate((1.0, -1.0, 0.0)):
            for i in range(4):
                cols = tail_columns(batch, width, i)
                torch.testing.assert_close(out[k * 4 + i, cols.start:].double(), want[c][i][-len(cols):],
                                           atol=ATOL, rtol=0, msg=lambda m, c=c, i=i, s=shared, f=frozen:
                                           f"shared={s} frozen={f} c={c:+g} row {i}: {m}")


def test_train_forward_layout_follows_its_switches(case):
    """Each switch turns its part off and nothing else: no shared prefix -> prefix_len 0; no frozen blocks ->
    the split at block 0; neither -> no split; both -> the longest common prefix that leaves every row the
    token before its tail, and the split at the first adapted block."""
    setup, t, batch, _ = case
    am = batch.attention_mask.bool()
    seqs = [batch.input_ids[i][am[i]].tolist() for i in range(len(am))]
    longest = min([common_prefix_len(seqs)] + [len(s) - int(n) - 1 for s, n in zip(seqs, batch.tail_len.tolist(),
                                                                                     strict=True)])
    both = TrainForward(t.model, batch)
    assert both.prefix_len == longest and both.split.k <= first_adapted_block(t.model)
    no_prefix = TrainForward(t.model, batch, shared_prefix=False)
    assert no_prefix.prefix_len == 0 and no_prefix.split.k == both.split.k
    no_frozen = TrainForward(t.model, batch, frozen=False)
    assert no_frozen.prefix_len == longest and no_frozen.split.k == 0
    neither = TrainForward(t.model, batch, shared_prefix=False, frozen=False)
    assert neither.split is None and neither.prefix_len == 0


def test_a_single_padding_token_with_a_shared_prefix(tiny):
    """A batch whose only padding is one token (rows one token apart) still gets its shared-prefix layout, and
    its tail log-probs equal each row's own forward (the pad id is read from that one padded position)."""
    from innerpissa.train.outputs import OutputItem, collate_outputs

    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4, layers=(0, 1)))
    randomize(ip.adapter_parameters(model), std=0.3)
    batch = collate_outputs([OutputItem(0, [5, 6, 7, 8], [11, 12], [13])], pad_token_id=0)
    assert int((batch.attention_mask == 0).sum()) == 1
    fwd = TrainForward(model, batch, True, True)
    assert fwd.prefix_len == 3
    with torch.no_grad():
        got = fwd.run((1.0, -1.0))
    for k, c in enumerate((1.0, -1.0)):
        want = _row_logprobs(model, batch, c)
        for i in range(2):
            n = int(batch.tail_len[i])
            torch.testing.assert_close(got[k * 2 + i, -n:].double(), want[i][-n:], atol=ATOL, rtol=0)
