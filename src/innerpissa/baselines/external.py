"""The real `steering-vectors` and `repeng` packages as external references (METHOD section 8), when they
import next to our stack (transformers 5, numpy 2, pandas 3).

Findings, checked with the versions pinned in the `external` extra:
- steering-vectors 0.12.2 declares `transformers<5`, so a plain `pip install` would downgrade transformers;
  installed with `pip install --no-deps steering-vectors==0.12.2` plus `scikit-learn` (imported by its
  aggregators at package import) it imports and trains/applies vectors on transformers 5 unchanged.
- repeng 0.4.0 declares `numpy<2`; with numpy 2 its import fails (`np.float_` was removed in NumPy 2.0). In a
  separate environment with numpy 1.26.4 it trains and applies a ControlVector on transformers 5.24 / torch
  2.13, but pandas 3 (ours) requires numpy>=2.0.2, hence "numpy<2 and pandas<3": it cannot share this
  environment, and the project does not downgrade numpy or pandas.
`external_status()` re-checks this at run time, so a comparison records why a peer is missing.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from innerpissa.baselines.common import SignedSteerer, fingerprint, resolve_layers
from innerpissa.baselines.vectors import NARROW_COEFFS
from innerpissa.data.pairs import ContrastivePair

#: distribution name -> (import name, pinned version, how to install it without touching our stack)
EXTERNAL_PACKAGES = {
    "steering-vectors": ("steering_vectors", "0.12.2",
                         "install with: pip install --no-deps steering-vectors==0.12.2 'scikit-learn>=1.4'"),
    "repeng": ("repeng", "0.4.0", "repeng 0.4.0 needs numpy<2 (it uses np.float_), so it cannot run next to numpy 2"),
}


def _check(dist: str) -> str:
    module, pin, how = EXTERNAL_PACKAGES[dist]
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        return f"not installed ({how})"
    try:
        importlib.import_module(module)
    except Exception as e:  # any import-time failure is the finding, e.g. AttributeError from numpy 2
        return f"installed {version} but import fails: {type(e).__name__}: {e}"
    note = "" if version == pin else f" (tested with {pin})"
    return f"ok {version}{note}"


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "absent"


def external_status() -> dict[str, str]:
    """Per external package: 'ok <version>' or why it cannot be used here (checked now, not cached)."""
    versions = {name: _version(name) for name in ("transformers", "numpy", "pandas", "torch")}
    status = {dist: _check(dist) for dist in EXTERNAL_PACKAGES}
    status["environment"] = ", ".join(f"{k} {v}" for k, v in versions.items())
    return status


def steering_vectors_available() -> bool:
    return _check("steering-vectors").startswith("ok")


def _require_steering_vectors():
    status = _check("steering-vectors")
    if not status.startswith("ok"):
        raise ImportError(f"steering-vectors is unavailable: {status}")
    import steering_vectors

    return steering_vectors


class SteeringVectorsSteerer(SignedSteerer):
    """The `steering-vectors` package's own extraction and hooks, on our pairs and our model.

    It reads the block outputs at the last token (its default `read_token_index=-1`). `aggregator="mean"`
    (default) is its CAA mean difference, directly comparable to our `mean_diff`; `aggregator="pca"` is its
    uncentered PCA, unit norm by design, rescaled here to the mean difference's norm per layer so that the
    coefficient sweeps share a unit. State c is the package's `SteeringVector.apply(multiplier=c)`.
    """

    name = "steering_vectors"

    def __init__(self, model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair],
                 layers: Sequence[int] | None = None, aggregator: str = "mean", batch_size: int = 16,
                 coeffs: Sequence[float] | None = None):
        sv = _require_steering_vectors()
        if aggregator not in ("mean", "pca"):
            raise ValueError(f"aggregator must be 'mean' or 'pca', got {aggregator!r}")
        self.model, self.aggregator = model, aggregator
        self.layers = resolve_layers(model, layers)
        self.default_coeffs = tuple(coeffs) if coeffs is not None else NARROW_COEFFS
        samples = [(p.positive, p.negative) for p in pairs]
        with torch.no_grad():
            pos, neg = sv.extract_activations(model, tokenizer, samples, layers=self.layers,
                                              batch_size=batch_size, move_to_cpu=True)
            mean = sv.aggregate_activations(pos, neg, sv.mean_aggregator())
            vectors: dict[int, Tensor] = mean
            if aggregator == "pca":
                pca = sv.aggregate_activations(pos, neg, sv.pca_aggregator())
                vectors = {k: v * mean[k].norm() for k, v in pca.items()}
        self.vector = sv.SteeringVector({k: v.float() for k, v in vectors.items()}, "decoder_block")

    def fingerprint(self) -> str:
        vs = self.vector.layer_activations
        return fingerprint((self.sign * vs[k] for k in sorted(vs)), "steering_vectors", self.aggregator, sorted(vs))

    @contextmanager
    def applied(self, c: float) -> Iterator[None]:
        dtype = next(self.model.parameters()).dtype
        with self.vector.to(dtype=dtype).apply(self.model, multiplier=c):
            yield
