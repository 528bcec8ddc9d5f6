"""Sign calibration (METHOD section 6): make c = +1 mean "toward the concept".

The learned axis has an arbitrary sign. After training we score a small built-in probe (Yes/No situations
whose honest answer is clear, never the evaluation set) at c = +1 and c = -1 with the same prompt format as
the evaluation, and negate the adapter's parameters if +1 scores lower. The validation pairs' log-prob gap
is reported beside it for diagnosis.
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


@torch.no_grad()
def calibrate(model, tokenizer, batch_size: int = 8, concept: str = "honesty") -> dict[str, Any]:
    """Score the concept's probe at c = -1, 0, +1; flip the adapter's sign if +1 is further from the
    concept than -1.

    The same `calibrate_sign` every baseline goes through, with the adapter's parameter negation as the flip.
    """
    from innerpissa.baselines.calibrate import calibrate_sign
    from innerpissa.steering import AdapterSteerer

    name, fn = concept_probe(model, tokenizer, concept, batch_size)
    result = calibrate_sign(AdapterSteerer(model), fn, flip=lambda: flip_sign(model))
    return {"probe": name, **result}
