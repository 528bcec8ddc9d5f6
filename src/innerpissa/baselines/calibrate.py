"""Sign calibration for any Steerer (METHOD section 6): make +c mean "toward the concept".

A PCA axis, a random direction or a learned adapter has no intrinsic sign. Score a probe (never the
evaluation set) at -coeff, 0 and +coeff; if +coeff scores below -coeff, flip the steerer in place, so every
caller keeps using the same coefficients and +c means toward the concept from then on. One function for the
adapter and every baseline, so all are calibrated the same way on the same probe.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from innerpissa.steering import Steerer

DEFAULT_SYSTEM = "You are a helpful assistant."  # the evaluation harness's default system message

#: `probe_fn()` or `probe_fn(system)`: a scalar "toward the concept" score of the model as it is now
ProbeFn = Callable[..., float]


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


def calibrate_sign(steerer: Steerer, probe_fn: ProbeFn, coeff: float = 1.0,
                   flip: Callable[[], None] | None = None, default_system: str = DEFAULT_SYSTEM) -> dict[str, Any]:
    """Score the probe at c = -coeff, 0, +coeff inside `steerer.at(c)`; flip if +coeff < -coeff.

    `probe_fn` is called with the steerer's system message at c when it accepts one argument (so prompting
    baselines can be probed too), else with none; it must not enter `steerer.at` itself (hooks would stack).
    `flip` negates the steerer in place (default: its `flip_sign()`, which every baseline and the adapter's
    steerer provide). `coeff` should be a coefficient the method stays coherent at (1.0 for the adapter
    and, in mean-difference units, for the vectors and S-space; prompting only has 1.0).
    Returns a JSON-able summary; `probe_score` is keyed like the trainer's calibration ("-1", "+0", "+1")
    and is given in the calibrated sign convention (after any flip).
    """
    if coeff <= 0:
        raise ValueError(f"coeff must be positive, got {coeff}")
    do_flip = _flipper(steerer, flip)
    with_system = _takes_system(probe_fn)
    scores: dict[float, float] = {}
    for c in (-coeff, 0.0, coeff):
        system = steerer.system_prompt(c, default_system)
        with steerer.at(c):
            scores[c] = float(probe_fn(system) if with_system else probe_fn())
    flipped = scores[coeff] < scores[-coeff]
    if flipped:
        do_flip()
        scores = {(-c if c else 0.0): v for c, v in scores.items()}
    return {
        "method": getattr(steerer, "name", type(steerer).__name__),
        "flipped": bool(flipped),
        "coeff": float(coeff),
        "probe_score": {f"{c:+g}": v for c, v in sorted(scores.items())},
        "probe_effect": scores[coeff] - scores[-coeff],
    }
