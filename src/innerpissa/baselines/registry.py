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

from innerpissa.baselines.external import (
    SteeringVectorsSteerer,
    repeng_external_available,
    steering_vectors_available,
    train_repeng_external,
)
from innerpissa.baselines.prompting import InstructionPrompting, PersonaPrompting
from innerpissa.baselines.sspace import SSpaceSteerer, train_sspace
from innerpissa.baselines.vectors import VECTOR_METHODS, VectorSteerer, train_vectors
from innerpissa.data.pairs import ContrastivePair
from innerpissa.steering import Steerer

BASELINE_NAMES = ("prompting", "instruction", "random", "pca", "mean_diff", "sspace", "steering_vectors", "repeng_external")
#: opt-in peers: listed by `available_baselines` only when they can run here
OPTIONAL = {"steering_vectors": steering_vectors_available, "repeng_external": repeng_external_available}
_SHARED = ("layers", "n_tokens", "batch_size", "cache")


def available_baselines() -> list[str]:
    """The names `build_baseline` can build here (steering_vectors only when the package imports,
    repeng_external only when repeng's virtualenv is configured, see `external.repeng_python`)."""
    return [n for n in BASELINE_NAMES if n not in OPTIONAL or OPTIONAL[n]()]


def build_baseline(name: str, model: nn.Module, tokenizer, train_pairs: Sequence[ContrastivePair],
                   seed: int = 0, **kw: Any) -> Steerer:
    """A ready Steerer for baseline `name` (see `BASELINE_NAMES`), trained on `train_pairs`.

    `seed` drives the random direction (the other methods are deterministic given the pairs).
    `cache` (a dict kept per model and pair set) lets random / pca / mean_diff share one activation pass.
    Keywords: vectors `center` (and `style` for pca: "repeng", default, or "v0"); S-space `modules`, `fit`,
    `rank`; prompting and instruction `positive`, `negative`, `neutral`, `mode`, `builtin`; steering_vectors `aggregator`;
    repeng_external `center`, `python`, `workdir`; all `coeffs` (the default sweep).
    """
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; use one of {BASELINE_NAMES}")
    coeffs = kw.pop("coeffs", None)
    if name in ("prompting", "instruction"):
        for k in _SHARED:
            kw.pop(k, None)
        steerer: Steerer = (PersonaPrompting if name == "prompting" else InstructionPrompting)(**kw)
        if coeffs is not None:
            steerer.default_coeffs = tuple(coeffs)
        return steerer
    if name in VECTOR_METHODS:
        vectors = train_vectors(model, tokenizer, train_pairs, method=name, seed=seed, **kw)
        return VectorSteerer(model, vectors, name=name, coeffs=coeffs)
    if name == "sspace":
        return SSpaceSteerer(model, train_sspace(model, tokenizer, train_pairs, **kw), coeffs=coeffs)
    kw.pop("cache", None)
    n_tokens = kw.pop("n_tokens", None)  # both packages read the last token only
    if name == "repeng_external":
        if n_tokens not in (None, 1):
            raise ValueError(f"repeng reads the last token only, got n_tokens={n_tokens}")
        return VectorSteerer(model, train_repeng_external(model, tokenizer, train_pairs, **kw), name=name,
                             coeffs=coeffs)
    return SteeringVectorsSteerer(model, tokenizer, train_pairs, coeffs=coeffs, **kw)
