"""The objective's direction: after a short run, what the objective asks for moved the asked way on the
validation pairs, and an objective with its sign planted the other way fails that same check (issue 21, item 2).

A falling training loss says nothing about the sign: an inverted target lowers its loss just as well. So each
objective names the quantity it asks for as a function of the coefficient, measured here on the held-out
validation pairs by code of this file (a forward hook, not the trainer's capture), and the check is
q(+1) > q(0) > q(-1) in the mean and q(+1) > q(-1) on most pairs. The plant test runs the same short training
with the objective's sign inverted and asserts that the check FAILS, so the check is shown able to fail.

Adding an objective (e.g. `--train.objective NAME`): append one `Objective` to `OBJECTIVES` with
  - `configure(cfg)`: set the TrainConfig fields that select it (and any budget it needs to move in the
    tiny run: keep the run a few seconds, seed fixed);
  - `quantity(trainer, c)`: per validation pair, the number the objective asks to go up at c = +1 and down at
    c = -1 (e.g. for a preference loss on the model's own completions: the log-prob of the preferred minus
    the dispreferred completion, computed here from `model(...).logits`); `direction_quantity` below is the
    hidden-state one of the separation family;
  - `plant_inverted(monkeypatch)`: flip the sign the objective's loss uses (patch the function the trainer
    calls), so the plant test shows the check catches it.
  - `before_fit(trainer, monkeypatch)` (optional): what the run needs between building and fitting.
Both parametrised tests then cover it; if its quantity should fall with c, negate it in `quantity`.

The output objectives (`pref`, `pref` with the NLL anchor, `dpo`, `sft`; train/outputs.py) ask c = +1 to prefer
the positive persona's completion and c = -1 the negative one: their quantity is the validation margin
m(c) = l_c(y+) - l_c(y-) (length-normalised log-probs, `completion_margin`), with completions that carry the
persona (`persona_writer`). Planting sign(c) inverted inside `output_loss` (edited in the source, 2026-12-04)
fails all four, as does the plant below. `distill` has no entry: it is a capacity check with no direction
of its own (its target is the mean-difference vector's effect, tested in test_outputs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import innerpissa as ip
from innerpissa.train import losses as losses_module
from innerpissa.train import outputs as outputs_module
from innerpissa.train import trainer as trainer_module
from innerpissa.train.config import TrainConfig, preset
from innerpissa.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

CS = (-1.0, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ quantities


@torch.no_grad()
def direction_projections(t: Trainer, c: float) -> torch.Tensor:
    """[validation pairs, 2]: the pos and neg prompt's state at the loss point, captured by a hook of this file,
    in the trainer's frozen basis, on its frozen direction, mean over the last n tokens, at coefficient c."""
    ref = t.ref
    mod = t.model.get_submodule(ref.point.module)
    store: dict[str, torch.Tensor] = {}
    if ref.point.where == "input":
        handle = mod.register_forward_pre_hook(
            lambda _m, args, kwargs: store.__setitem__("h", args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True)
    else:
        handle = mod.register_forward_hook(
            lambda _m, _a, out: store.__setitem__("h", out[0] if isinstance(out, tuple | list) else out))
    out = torch.zeros(len(t.val_idx), 2, dtype=torch.float64)
    try:
        for k, i in enumerate(t.val_idx):
            item = t.ds[i]
            for side, ids in enumerate((item.positive, item.negative)):
                with ip.steer(t.model, c):
                    t.model(input_ids=torch.tensor([list(ids)]))
                h = store["h"][0, -ref.n_tokens:].double()
                coords = h if ref.basis is None else h @ ref.basis.double()
                out[k, side] = (coords @ ref.direction.double()).mean()
    finally:
        handle.remove()
    return out


@torch.no_grad()
def completion_margin(t: Trainer, c: float) -> torch.Tensor:
    """m(c) per validation item of an output objective: l_c(y+) - l_c(y-), with l_c(y) = log p_c(y | x) / |y|
    the length-normalised log-prob of a completion after the persona-free input, each row alone and unpadded
    through the model at coefficient c, log_softmax of its logits gathered by hand (no library log-prob path)."""
    out = t.outputs
    margins = []
    with ip.steer(t.model, c):
        for i in out.val_idx:
            item = out.items[i]
            ls = []
            for y in (item.y_pos, item.y_neg):
                logits = t.model(input_ids=torch.tensor([item.x + y])).logits[0].double()
                lp = F.log_softmax(logits, -1)
                ls.append(sum(float(lp[len(item.x) - 1 + k, tok]) for k, tok in enumerate(y)) / len(y))
            margins.append(ls[0] - ls[1])
    return torch.tensor(margins, dtype=torch.float64)


def separation(t: Trainer, c: float) -> torch.Tensor:
    """s(c) per validation pair: pos minus neg along the direction (the default `separation` target)."""
    p = direction_projections(t, c)
    return p[:, 0] - p[:, 1]


def shift(t: Trainer, c: float) -> torch.Tensor:
    """Both prompts' mean state along the direction (the `shift` and `shift_moved` targets)."""
    return direction_projections(t, c).mean(1)


# ------------------------------------------------------------------------------------------ the check


def check_direction(q: dict[float, torch.Tensor], min_fraction: float = 0.5) -> None:
    """Raise AssertionError unless q(+1) > q(0) > q(-1) in the mean over validation pairs and q(+1) > q(-1) on
    more than `min_fraction` of the pairs."""
    mean = {c: float(v.mean()) for c, v in q.items()}
    assert mean[1.0] > mean[0.0] > mean[-1.0], f"not q(+1) > q(0) > q(-1) on validation: {mean}"
    ordered = float((q[1.0] > q[-1.0]).double().mean())
    assert ordered > min_fraction, f"q(+1) > q(-1) on only {ordered:.0%} of the validation pairs ({mean})"


# ------------------------------------------------------------------------------------------ objectives


def _invert_target_stat(monkeypatch) -> None:
    """The audit's planted bug: the per-pair target with its sign flipped (neg - pos for `separation`)."""
    real = trainer_module.target_stat
    monkeypatch.setattr(trainer_module, "target_stat", lambda proj, target: -real(proj, target))


def _invert_projection_sign(monkeypatch) -> None:
    """sign(c) flipped inside the projection loss: c = +1 asks the target down."""
    real = losses_module._sign
    monkeypatch.setattr(losses_module, "_sign", lambda c, like: -real(c, like))


def _invert_output_coefficients(monkeypatch) -> None:
    """The output loss sees each coefficient's log-probs under the opposite coefficient: c = +1 is trained to
    prefer the negative completion (what a flipped sign(c) in `output_loss` would do)."""
    real = outputs_module.output_loss
    monkeypatch.setattr(outputs_module, "output_loss",
                        lambda kind, cfg, l_c, l_0: real(kind, cfg, {-c: v for c, v in l_c.items()}, l_0))


def _budget(cfg: TrainConfig) -> None:
    """A tiny run long enough that the separation moves clearly (6 seeds checked: all ordered, 2026-12-03)."""
    cfg.data.n_pairs, cfg.epochs, cfg.lr = 48, 6, 3e-2


def _target(name: str, kind: str | None = None) -> Callable[[TrainConfig], None]:
    def configure(cfg: TrainConfig) -> None:
        _budget(cfg)
        cfg.loss_target = name
        if kind is not None:
            cfg.loss.kind = kind
    return configure


def _output(kind: str, w_nll: float = 0.0) -> Callable[[TrainConfig], None]:
    """`--train.objective KIND` on 6-token completions (48 pairs: 12 validation items; 4 seeds checked with each
    output objective: all ordered, and all inverted plants fail, 2026-12-04)."""
    def configure(cfg: TrainConfig) -> None:
        cfg.data.n_pairs, cfg.epochs, cfg.lr = 48, 3, 3e-2
        cfg.objective = kind
        cfg.outputs.n_new_tokens, cfg.outputs.w_nll = 6, w_nll
    return configure


POS_TOKENS, NEG_TOKENS = range(100, 160), range(300, 360)


def persona_writer(t: Trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base model's completions, as the output objectives make them, replaced by a writer whose completions
    carry the persona: a positive persona prompt gets tokens from POS_TOKENS, a negative one from NEG_TOKENS
    (drawn per prompt, so every pair's two completions differ). The tiny random model's own greedy completions
    carry nothing of the persona (their pos and neg differ at random, often not at all), so what a short run
    learns on the training pairs cannot carry to the held-out ones; with a writer like a real model's it can, and
    the direction is checked on validation pairs. Everything after the completions is the library's."""
    tok = t.tok
    positive = {tuple(tok(p.positive, add_special_tokens=False)["input_ids"]) for p in t.outputs.pairs}

    def write(_model, _tok, prompt_ids, max_new_tokens):
        out = []
        for ids in prompt_ids:
            pool = POS_TOKENS if tuple(ids) in positive else NEG_TOKENS
            g = torch.Generator().manual_seed(hash(tuple(ids)) % 2**31)
            out.append([pool[int(k)] for k in torch.randint(len(pool), (max_new_tokens,), generator=g)])
        return out

    monkeypatch.setattr(outputs_module, "generate_ids", write)


@dataclass(frozen=True)
class Objective:
    name: str
    configure: Callable[[TrainConfig], None]
    quantity: Callable[[Trainer, float], torch.Tensor]
    plant_inverted: Callable[[pytest.MonkeyPatch], None]
    before_fit: Callable[[Trainer, pytest.MonkeyPatch], None] | None = None
    """What the test sets up between building the trainer and fitting it (e.g. `persona_writer`)."""


OBJECTIVES = [
    Objective("separation", _target("separation"), separation, _invert_target_stat),
    Objective("shift", _target("shift"), shift, _invert_projection_sign),
    Objective("shift_moved-raw", _target("shift_moved", "raw"), shift, _invert_target_stat),
    # output objectives (train/outputs.py): at c = +1 prefer the positive persona's completion, at -1 the negative
    *(Objective(name, _output(kind, w_nll), completion_margin, _invert_output_coefficients, persona_writer)
      for name, kind, w_nll in (("pref", "pref", 0.0), ("pref-nll", "pref", 1.0), ("dpo", "dpo", 0.0),
                                ("sft", "sft", 0.0))),
]


def trained(tmp_path, objective: Objective, monkeypatch: pytest.MonkeyPatch, seed: int = 0) -> Trainer:
    cfg = preset("tiny")
    cfg.out, cfg.calibrate, cfg.seed = tmp_path / objective.name, False, seed
    objective.configure(cfg)
    torch.manual_seed(cfg.seed)  # as train() does
    t = Trainer(cfg)
    if objective.before_fit is not None:
        objective.before_fit(t, monkeypatch)
    t.fit()
    return t


def quantities(t: Trainer, objective: Objective) -> dict[float, torch.Tensor]:
    return {c: objective.quantity(t, c) for c in CS}


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_short_run_moves_what_the_objective_asks_for_on_validation(tmp_path, objective, monkeypatch):
    t = trained(tmp_path, objective, monkeypatch)
    assert len(t.outputs.val_idx if t.outputs is not None else t.val_idx) >= 6
    q = quantities(t, objective)
    # c = 0 is the base model: its quantity is the one before training (the cached reference says the same)
    if objective.quantity is separation:
        torch.testing.assert_close(q[0.0], t.ref.sep0[t.val_idx].double(), atol=1e-4, rtol=1e-4)
    if objective.quantity is completion_margin:
        l0 = t.outputs.l0[t.outputs.val_idx].double()
        torch.testing.assert_close(q[0.0], l0[:, 0] - l0[:, 1], atol=1e-4, rtol=1e-4)
    check_direction(q)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_inverted_objective_fails_the_direction_check(tmp_path, objective, monkeypatch):
    objective.plant_inverted(monkeypatch)
    t = trained(tmp_path, objective, monkeypatch)
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="not q\\(\\+1\\) > q\\(0\\) > q\\(-1\\)"):
        check_direction(quantities(t, objective))


def test_direction_check_itself():
    ok = {-1.0: torch.tensor([-1.0, -2.0, 0.5]), 0.0: torch.tensor([0.0, 0.0, 0.0]),
          1.0: torch.tensor([1.0, 2.0, 0.4])}
    check_direction(ok)
    with pytest.raises(AssertionError, match="not q"):
        check_direction({-1.0: ok[1.0], 0.0: ok[0.0], 1.0: ok[-1.0]})
    with pytest.raises(AssertionError, match="not q"):  # +1 above -1 but not above 0
        check_direction({-1.0: ok[-1.0], 0.0: torch.full((3,), 5.0), 1.0: ok[1.0]})
    # the mean is ordered, but one large pair carries it: most pairs are not
    skewed = {-1.0: torch.tensor([0.0, 0.1, 0.1]), 0.0: torch.tensor([1.0, 0.1, 0.1]),
              1.0: torch.tensor([9.0, 0.0, 0.0])}
    with pytest.raises(AssertionError, match="only 33%"):
        check_direction(skewed)
