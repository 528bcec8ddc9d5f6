"""Sign calibration for any Steerer (METHOD section 6): check, and only on evidence fix, that +c means
"toward the concept".

Every method has a construction sign (repeng's PCA: toward the positive prompts by its vote; mean
difference: pos - neg; a random draw: arbitrary). Score a probe (never the evaluation set) at -coeff, 0 and
+coeff. The shared rule (`rule="significant"`, default): flip the steerer in place only when the bootstrap CI
over probe items of score(+coeff) - score(-coeff) lies entirely below 0; when it lies above 0 the sign is
"confirmed", otherwise it is "undetermined" and the construction sign is kept (a 0.07-nat margin on a probe
that barely moves is noise, not evidence). A probe that returns one number instead of per-item scores has
no noise estimate, so under this rule it never flips. `rule="always"` is the earlier behaviour (flip whenever
+coeff scores below -coeff), `rule="never"` only reports. One function for the adapter and every baseline,
so all are judged the same way on the same probe; a flip keeps every caller's coefficients meaning
"toward the concept" from then on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from innerpissa.steering import Steerer

DEFAULT_SYSTEM = "You are a helpful assistant."  # the evaluation harness's default system message

#: `probe_fn()` or `probe_fn(system)`: "toward the concept" scores of the model as it is now, one per probe
#: item (a 1-D tensor, array or list: gives a CI) or their mean (a float: no CI)
ProbeFn = Callable[..., Any]
CALIBRATION_RULES = ("significant", "always", "never")


def bootstrap_mean_ci(x: torch.Tensor, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-item values x [n] (items resampled with replacement)."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    if x.numel() < 2:
        raise ValueError(f"a bootstrap CI needs at least 2 items, got {x.numel()}")
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randint(0, x.numel(), (n_boot, x.numel()), generator=g)].mean(1)
    a = (1 - level) / 2
    return float(means.quantile(a)), float(means.quantile(1 - a))


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
    if flip is not None:
        return flip
    method = getattr(steerer, "flip_sign", None)
    if callable(method):
        return method
    raise TypeError(f"{type(steerer).__name__} has no flip_sign(); pass flip=<callable that negates it>")


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
        coeff = float(getattr(steerer, "calibration_coeff", 1.0))
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
        "method": getattr(steerer, "name", type(steerer).__name__),
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
