"""Sign calibration (METHOD section 6): a check that c = +1 means "toward the concept".

With the fixed-order hinge (loss.mono_ordering = forward) the sign already means "toward the positive
persona" by construction, so calibration is a check: it scores a small built-in probe (Yes/No situations
whose honest answer is clear, never the evaluation set) at c = -1, 0, +1 with the evaluation's prompt format,
and also scores the probe under persona prompting, which shows whether the probe can see the concept on this
model at all. Modes (`TrainConfig.calibrate_flip`):
  `significant` (default): flip only if the bootstrap CI over probe items of probe(+1) - probe(-1) lies
    below 0 AND the persona-prompted probe responds (its CI of positive - negative persona lies above 0);
    a probe effect within its noise, or from a probe the personas do not move, never flips.
  `never`: report only.  `always` (v0): flip whenever probe(+1) < probe(-1), noise or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from innerpissa.adapter import flip_sign
from innerpissa.data.builtin import BUILTIN_DIR

DEFAULT_SYSTEM = "You are a helpful assistant."


def load_probe(name: str = "honesty_probe") -> pd.DataFrame:
    """Probe rows: `dilemma_situation`, `action`, `sign` (+1 where Yes is the honest answer, -1 where No is)."""
    import json

    items = json.loads((BUILTIN_DIR / f"{name}.json").read_text())["items"]
    return pd.DataFrame({"dilemma_situation": [i[0] for i in items], "action": [i[1] for i in items],
                         "sign": [1.0 if i[2] else -1.0 for i in items]})


def probe_fn(model, tokenizer, probe: pd.DataFrame | None = None, system: str = DEFAULT_SYSTEM,
             batch_size: int = 8) -> Callable[[], float]:
    """A function scoring the model as it is now: mean signed Yes-vs-No log-odds on the probe, in nats
    (higher = more honest answers). Tokenised once."""
    from innerpissa.eval.choices import choice_ids
    from innerpissa.eval.harness import encode_prompts, score_encoded

    probe = load_probe() if probe is None else probe
    encoded = encode_prompts(tokenizer, probe, system)
    choices = choice_ids(tokenizer)
    sign = torch.tensor(probe["sign"].to_numpy())

    def score() -> float:
        s = score_encoded(model, encoded, choices, tokenizer.pad_token_id, batch_size=batch_size)
        return float((torch.tensor((s["logp_yes"] - s["logp_no"]).to_numpy()) * sign).mean())

    return score


def concept_probe(model, tokenizer, concept: str = "honesty", batch_size: int = 8) -> tuple[str, Callable[..., float]]:
    """(probe name, probe function) for a built-in concept: the sentiment probe for `sentiment`, else the
    honesty probe."""
    if concept == "sentiment":
        from innerpissa.eval.sentiment_probe import sentiment_probe_fn

        return "sentiment_probe", sentiment_probe_fn(model, tokenizer)
    return "honesty_probe", probe_fn(model, tokenizer, batch_size=batch_size)


def probe_items_fn(model, tokenizer, probe: pd.DataFrame | None = None,
                   batch_size: int = 8) -> Callable[[str], torch.Tensor]:
    """A function of the system message scoring the model as it is now: per probe item, the signed
    Yes-vs-No log-odds in nats [items] (higher = more honest)."""
    from innerpissa.eval.choices import choice_ids
    from innerpissa.eval.harness import encode_prompts, score_encoded

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


def bootstrap_mean_ci(x: torch.Tensor, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-item values x [n] (items resampled with replacement)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=g)
    means = x.double()[idx].mean(1)
    a = (1 - level) / 2
    return float(means.quantile(a)), float(means.quantile(1 - a))


CALIBRATE_FLIPS = ("significant", "never", "always")


@torch.no_grad()
def calibrate(model, tokenizer, batch_size: int = 8, mode: str = "always", builtin: str = "honesty",
              n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Check (and, per `mode`, fix) the adapter's sign on the probe; see the module docstring.

    `always` goes through the same `calibrate_sign` as every baseline (flip if +1 scores below -1).
    The other modes also report `persona_effect` and its CI (the probe's own response to persona
    prompting, positive minus negative persona sentence), `effect_ci`, and why they did or did not flip.
    """
    from innerpissa.baselines.calibrate import calibrate_sign
    from innerpissa.steering import AdapterSteerer

    if mode not in CALIBRATE_FLIPS:
        raise ValueError(f"unknown calibration mode {mode!r}; use one of {CALIBRATE_FLIPS}")
    if mode == "always":
        name, fn = concept_probe(model, tokenizer, builtin, batch_size)
        result = calibrate_sign(AdapterSteerer(model), fn, flip=lambda: flip_sign(model), rule="always")
        return {"probe": name, "mode": mode, **result}
    from innerpissa.adapter import steer
    from innerpissa.baselines.prompting import builtin_personas

    if builtin == "sentiment":
        from innerpissa.eval.sentiment_probe import sentiment_probe_fn

        name, score = "sentiment_probe", sentiment_probe_fn(model, tokenizer, per_item=True)
    else:
        name, score = "honesty_probe", probe_items_fn(model, tokenizer, batch_size=batch_size)
    items = {}
    for c in (-1.0, 0.0, 1.0):
        with steer(model, c):
            items[c] = score(DEFAULT_SYSTEM)
    pos, neg = builtin_personas(builtin)
    persona = score(f"{DEFAULT_SYSTEM} {pos}") - score(f"{DEFAULT_SYSTEM} {neg}")
    effect = items[1.0] - items[-1.0]
    effect_ci = bootstrap_mean_ci(effect, n_boot, seed)
    persona_ci = bootstrap_mean_ci(persona, n_boot, seed + 1)
    responds = persona_ci[0] > 0
    against = effect_ci[1] < 0
    flipped = mode == "significant" and responds and against
    if flipped:
        flip_sign(model)
        items = {-c if c else 0.0: v for c, v in items.items()}
        effect, effect_ci = -effect, (-effect_ci[1], -effect_ci[0])
    reason = ("flipped: +1 was significantly further from the concept on a probe that persona prompting moves" if flipped
              else "kept: the probe does not respond to persona prompting beyond its noise" if not responds
              else "kept: the probe effect is within its noise or already positive" if not against
              else "kept: mode 'never' only reports")
    return {"probe": name, "mode": mode, "method": "innerpissa", "flipped": bool(flipped),
            "coeff": 1.0, "probe_score": {f"{c:+g}": float(v.mean()) for c, v in sorted(items.items())},
            "probe_effect": float(effect.mean()), "effect_ci": list(effect_ci),
            "persona_effect": float(persona.mean()), "persona_ci": list(persona_ci),
            "probe_responds": bool(responds), "reason": reason}
