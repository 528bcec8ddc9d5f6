"""One constructor for every baseline, so `innerpissa compare` can loop over names.

Every trained baseline is built from the same training pairs on the model as it is (call it on the base
model: with an adapter attached, at c = 0). Shared keywords (`layers`, `n_tokens`, `batch_size`, `cache`,
`coeffs`) may be passed to any name, and are ignored where they mean nothing (prompting has no layers);
method-specific keywords go only to their method, and a misspelled one raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from innerpissa.baselines.external import SteeringVectorsSteerer, steering_vectors_available
from innerpissa.baselines.prompting import PersonaPrompting
from innerpissa.baselines.sspace import SSpaceSteerer, train_sspace
from innerpissa.baselines.vectors import VECTOR_METHODS, VectorSteerer, train_vectors
from innerpissa.data.pairs import ContrastivePair
from innerpissa.steering import Steerer

BASELINE_NAMES = ("prompting", "random", "pca", "mean_diff", "sspace", "steering_vectors")
_SHARED = ("layers", "n_tokens", "batch_size", "cache")


def available_baselines() -> list[str]:
    """The names `build_baseline` can build here (steering_vectors only when the package imports)."""
    return [n for n in BASELINE_NAMES if n != "steering_vectors" or steering_vectors_available()]


def build_baseline(name: str, model: nn.Module, tokenizer, train_pairs: Sequence[ContrastivePair],
                   seed: int = 0, **kw: Any) -> Steerer:
    """A ready Steerer for baseline `name` (see `BASELINE_NAMES`), trained on `train_pairs`.

    `seed` drives the random direction (the other methods are deterministic given the pairs).
    `cache` (a dict kept per model and pair set) lets random / pca / mean_diff share one activation pass.
    Keywords: vectors `center`; S-space `modules`, `fit`, `rank`; prompting `positive`, `negative`,
    `neutral`, `mode`, `builtin`; steering_vectors `aggregator`; all `coeffs` (the default sweep).
    """
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; use one of {BASELINE_NAMES}")
    coeffs = kw.pop("coeffs", None)
    if name == "prompting":
        for k in _SHARED:
            kw.pop(k, None)
        steerer: Steerer = PersonaPrompting(**kw)
        if coeffs is not None:
            steerer.default_coeffs = tuple(coeffs)
        return steerer
    if name in VECTOR_METHODS:
        vectors = train_vectors(model, tokenizer, train_pairs, method=name, seed=seed, **kw)
        return VectorSteerer(model, vectors, name=name, coeffs=coeffs)
    if name == "sspace":
        return SSpaceSteerer(model, train_sspace(model, tokenizer, train_pairs, **kw), coeffs=coeffs)
    kw.pop("cache", None)
    kw.pop("n_tokens", None)  # the package reads the last token only
    return SteeringVectorsSteerer(model, tokenizer, train_pairs, coeffs=coeffs, **kw)
