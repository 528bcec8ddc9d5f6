"""Sign calibration (METHOD section 6), one module for the adapter and every baseline.

The shared rule, `calibrate_sign`: every method has a construction sign (repeng's PCA: toward the positive
prompts by its vote; mean difference: pos - neg; the adapter: whatever training found; a random draw:
arbitrary). Score a probe (never the evaluation set) at -coeff, 0 and +coeff. `rule="significant"`
(default): flip the steerer in place only when the bootstrap CI over probe items of score(+coeff) -
score(-coeff) lies entirely below 0; when it lies above 0 the sign is "confirmed", otherwise "undetermined"
and the construction sign is kept (a 0.07-nat margin on a probe that barely moves is noise, not evidence).
A probe that returns one number has no noise estimate, so under this rule it never flips. `rule="always"` is
the earlier behaviour (flip whenever +coeff scores below -coeff), `rule="never"` only reports.

The adapter's check after training, `calibrate` (`TrainConfig.calibrate_flip`), also scores the probe under
persona prompting, which shows whether the probe can see the concept on this model at all:
  `significant` (default): flip only if probe(+1) - probe(-1) is significantly below 0 AND the
    persona-prompted probe responds (its CI of positive - negative persona lies above 0);
  `never`: report only.  `always` (v0): flip whenever probe(+1) < probe(-1), noise or not.
Probes: the built-in honesty probe (Yes/No situations whose honest answer is clear, in the evaluation's
prompt format) and, for `sentiment`, `eval.sentiment_probe`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from innerpissa.data.builtin import BUILTIN_DIR
from innerpissa.data.chat import DEFAULT_SYSTEM
from innerpissa.eval.choices import choice_ids
from innerpissa.eval.harness import encode_prompts, score_encoded
from innerpissa.eval.sentiment_probe import sentiment_probe_fn
from innerpissa.eval.stats import bootstrap_mean_ci
from innerpissa.steering import Steerer

#: `probe_fn()` or `probe_fn(system)`: "toward the concept" scores of the model as it is now, one per probe
#: item (a 1-D tensor, array or list: gives a CI) or their mean (a float: no CI)
ProbeFn = Callable[..., Any]
CALIBRATION_RULES = ("significant", "always", "never")


def _items(value: Any) -> torch.Tensor:
    """A probe's output as float64: 0-d for a single score, 1-d for per-item scores."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu", torch.float64)
    else:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64))
    if t.dim() > 1:
        raise ValueError(f"a probe must return a score or a 1-D tensor of per-item scores, got shape {tuple(t.shape)}")
    return t


def _takes_system(probe_fn: ProbeFn) -> bool:
    try:
        inspect.signature(probe_fn).bind("system")
    except TypeError:
        return False
    except ValueError:  # builtins without a signature: assume the plain zero-argument form
        return False
    return True


def _flipper(steerer: Steerer, flip: Callable[[], None] | None) -> Callable[[], None]:
    if flip is None and type(steerer).flip_sign is Steerer.flip_sign:
        steerer.flip_sign()  # raises: say so before any probing
    return flip if flip is not None else steerer.flip_sign


def calibrate_sign(steerer: Steerer, probe_fn: ProbeFn, coeff: float | None = None,
                   flip: Callable[[], None] | None = None, default_system: str = DEFAULT_SYSTEM,
                   rule: str = "significant", n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, Any]:
    """Score the probe at c = -coeff, 0, +coeff inside `steerer.at(c)`; flip per `rule` (module doc).

    `probe_fn` is called with the steerer's system message at c when it accepts one argument (so prompting
    baselines can be probed too), else with none; it must not enter `steerer.at` itself (hooks would stack).
    It returns per-item scores (1-D; the effect's CI is a paired bootstrap over items) or one mean score.
    `flip` negates the steerer in place (default: its `flip_sign()`, which every baseline and the adapter's
    steerer provide). `coeff` should be a push the method stays coherent at; None takes the steerer's
    `calibration_coeff` (unit vectors: one mean persona difference) or 1.0 (the adapter, mean-difference
    vectors and S-space; prompting only has 1.0).
    Returns a JSON-able summary; `sign` is "confirmed", "flipped", "undetermined" (kept the construction
    sign) or "kept"/"reported" (rules always/never); `probe_score` is keyed like the trainer's calibration
    ("-1", "+0", "+1"), and it, `probe_effect` and `effect_ci` are in the calibrated convention (after any flip).
    """
    if rule not in CALIBRATION_RULES:
        raise ValueError(f"unknown calibration rule {rule!r}; use one of {CALIBRATION_RULES}")
    if coeff is None:
        coeff = float(steerer.calibration_coeff)
    if coeff <= 0:
        raise ValueError(f"coeff must be positive, got {coeff}")
    do_flip = _flipper(steerer, flip)
    with_system = _takes_system(probe_fn)
    items: dict[float, torch.Tensor] = {}
    for c in (-coeff, 0.0, coeff):
        system = steerer.system_prompt(c, default_system)
        with steerer.at(c):
            items[c] = _items(probe_fn(system) if with_system else probe_fn())
    scores = {c: float(v.mean()) for c, v in items.items()}
    effect = scores[coeff] - scores[-coeff]
    plus, minus = items[coeff], items[-coeff]
    paired = plus.dim() == 1 and plus.shape == minus.shape and plus.numel() >= 2
    ci = bootstrap_mean_ci(plus - minus, n_boot, seed, level) if paired else None
    if rule == "always":
        flipped, sign = effect < 0, "kept"
    elif rule == "never":
        flipped, sign = False, "reported"
    else:
        flipped = ci is not None and ci[1] < 0
        sign = "flipped" if flipped else "confirmed" if ci is not None and ci[0] > 0 else "undetermined"
    if flipped:
        do_flip()
        scores = {(-c if c else 0.0): v for c, v in scores.items()}
        effect = -effect
        ci = None if ci is None else (-ci[1], -ci[0])
        sign = "flipped"
    why = {"confirmed": "the probe's CI lies above 0 at the construction sign",
           "flipped": "the probe's CI lay below 0" if rule == "significant" else "+coeff scored below -coeff",
           "undetermined": ("the probe's CI spans 0: construction sign kept" if ci is not None else
                            "the probe gave no per-item scores, so its noise is unknown: construction sign kept"),
           "kept": "+coeff scored above -coeff", "reported": "rule 'never' only reports"}[sign]
    return {
        "method": steerer.name,
        "flipped": bool(flipped),
        "sign": sign,
        "rule": rule,
        "reason": why,
        "coeff": float(coeff),
        "probe_score": {f"{c:+g}": v for c, v in sorted(scores.items())},
        "probe_effect": effect,
        "effect_ci": None if ci is None else [ci[0], ci[1]],
        "level": level,
        "n_items": int(plus.numel()) if paired else 1,
    }


# ---------------------------------------------------------------- probes and the adapter's check


def load_probe(name: str = "honesty_probe") -> pd.DataFrame:
    """Probe rows: `dilemma_situation`, `action`, `sign` (+1 where Yes is the honest answer, -1 where No is)."""
    items = json.loads((BUILTIN_DIR / f"{name}.json").read_text())["items"]
    return pd.DataFrame({"dilemma_situation": [i[0] for i in items], "action": [i[1] for i in items],
                         "sign": [1.0 if i[2] else -1.0 for i in items]})


def concept_probe(model, tokenizer, concept: str = "honesty", batch_size: int = 8) -> tuple[str, ProbeFn]:
    """(probe name, probe function of the system message) for a built-in concept: the sentiment probe for
    `sentiment`, else the honesty probe. Both return per-item scores, so `calibrate_sign` has a CI and
    applies the same evidence rule to every method (a mean alone would never flip a sign)."""
    if concept == "sentiment":
        return "sentiment_probe", sentiment_probe_fn(model, tokenizer)
    return "honesty_probe", probe_items_fn(model, tokenizer, batch_size=batch_size)


def probe_items_fn(model, tokenizer, probe: pd.DataFrame | None = None,
                   batch_size: int = 8) -> Callable[[str], torch.Tensor]:
    """A function of the system message scoring the model as it is now: per probe item, the signed
    Yes-vs-No log-odds in nats [items] (higher = more honest)."""

    probe = load_probe() if probe is None else probe
    choices = choice_ids(tokenizer)
    sign = torch.tensor(probe["sign"].to_numpy())
    encoded: dict[str, Any] = {}

    def score(system: str) -> torch.Tensor:
        if system not in encoded:
            encoded[system] = encode_prompts(tokenizer, probe, system)
        s = score_encoded(model, encoded[system], choices, tokenizer.pad_token_id, batch_size=batch_size)
        return torch.tensor((s["logp_yes"] - s["logp_no"]).to_numpy()) * sign

    return score


CALIBRATE_FLIPS = ("significant", "never", "always")


@torch.no_grad()
def calibrate(model, tokenizer, batch_size: int = 8, mode: str = "always", builtin: str = "honesty",
              n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Check (and, per `mode`, fix) the adapter's sign on the concept's probe with `calibrate_sign`, the rule
    every baseline goes through; see the module docstring. Except for `always`, the probe's own response to
    persona prompting (positive minus negative persona sentence) is measured first (`persona_effect`, its
    CI, `probe_responds`): a probe that does not respond beyond its noise is only reported, never acted on."""
    from innerpissa.data.pairs import builtin_personas
    from innerpissa.steering import AdapterSteerer

    if mode not in CALIBRATE_FLIPS:
        raise ValueError(f"unknown calibration mode {mode!r}; use one of {CALIBRATE_FLIPS}")
    name, score = concept_probe(model, tokenizer, builtin, batch_size)
    extra: dict[str, Any] = {}
    if mode != "always":
        pos, neg = builtin_personas(builtin)
        persona = score(f"{DEFAULT_SYSTEM} {pos}") - score(f"{DEFAULT_SYSTEM} {neg}")
        persona_ci = bootstrap_mean_ci(persona, n_boot, seed + 1)
        extra = {"persona_effect": float(persona.mean()), "persona_ci": list(persona_ci),
                 "probe_responds": bool(persona_ci[0] > 0)}
    rule = "never" if mode == "never" or (extra and not extra["probe_responds"]) else mode
    result = calibrate_sign(AdapterSteerer(model), score, rule=rule, n_boot=n_boot, seed=seed)
    if extra and not extra["probe_responds"]:
        result["reason"] = "kept: the probe does not respond to persona prompting beyond its noise"
    return {"probe": name, "mode": mode, **result, **extra}
