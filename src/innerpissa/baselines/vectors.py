"""Steering vectors on the residual stream: PCA (repeng-style), mean difference (CAA) and a random control.

All three come from the same contrastive pairs as the adapter: the decoder block outputs of the chosen layers
are read on the last N shared tokens of every pair (helper `capture_pair_activations`, left padding, masks
respected), and per layer
- `mean_diff`: v = mean over pairs of (pos - neg), token-averaged per pair (CAA);
- `pca`: the first principal axis of the per-pair differences, centered like repeng's `pca_diff` (sklearn's
  PCA centers), sign aligned with the mean difference, scaled to the norm of the mean difference;
- `random`: a seeded random unit direction scaled to the norm of the mean difference.
Every vector has the norm of its layer's mean difference, so one coefficient means the same amount of push
for all three: c = 1 moves each steered block's output by one mean persona difference, and the random
vector shows what a push of that size does when it points nowhere in particular. State c adds c * v to the
block output at every position, through hooks that `at(c)` always removes.

Measured on SmolLM2-135M (64 honesty pairs, layers 12-23): the centered PCA axis has cosine only 0.1-0.6
with the mean difference (it follows how pairs differ from each other, e.g. which persona word), while the
uncentered one (`center=False`) has 0.95-0.99. The default stays repeng's centered form, as specified.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from innerpissa.baselines.common import (
    SignedSteerer,
    block_name,
    capture_pair_activations,
    edited_outputs,
    fingerprint,
    load_tensors,
    model_place,
    module_place,
    resolve_layers,
    save_tensors,
)
from innerpissa.data.pairs import ContrastivePair
from innerpissa.train.directions import CapturePoint, direction_from_diffs

VECTOR_METHODS = ("pca", "mean_diff", "random")
# Coefficients are in units of the layer's mean persona difference. Measured on SmolLM2-135M with the
# default 12 layers (next-token NLL of a chat transcript, 3.07 at c = 0): mean_diff 3.65 / 5.11 / 8.14 at
# c = 1 / 2 / 4, random 3.20 / 3.98 / 7.83 at c = 1 / 4 / 8. Each default sweep is geometric and reaches past
# the point where coherence breaks, so the harness (by ΔNLL) finds each method's usable range.
NARROW_COEFFS = (-8.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
WIDE_COEFFS = (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_VECTOR_COEFFS = {"mean_diff": NARROW_COEFFS, "pca": NARROW_COEFFS, "random": WIDE_COEFFS}


@dataclass
class SteeringVectors:
    """One vector per decoder block (keyed by block index, so files do not depend on module names)."""

    vectors: dict[int, Tensor]
    method: str
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """`<path>.safetensors` (one tensor per layer) and `<path>.json` (method and statistics)."""
        tensors = {f"layer.{layer}": v for layer, v in self.vectors.items()}
        return save_tensors(path, tensors, {"kind": "steering_vectors", "method": self.method, **self.meta})

    @classmethod
    def load(cls, path: str | Path) -> SteeringVectors:
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "steering_vectors":
            raise ValueError(f"{path} does not hold steering vectors (kind={meta.get('kind')!r})")
        meta.pop("kind")
        vectors = {int(k.removeprefix("layer.")): v.float() for k, v in tensors.items()}
        return cls(dict(sorted(vectors.items())), meta.pop("method"), meta)


def _random_unit(dim: int, seed: int, layer: int) -> Tensor:
    """A seeded unit vector; the stream depends on (seed, layer) only, so adding a layer changes no other."""
    g = torch.Generator().manual_seed(seed * 100_003 + layer)
    v = torch.randn(dim, generator=g)
    return v / v.norm()


def vectors_from_diffs(diffs: dict[int, Tensor], method: str, seed: int = 0,
                       center: bool = True) -> tuple[dict[int, Tensor], dict[int, dict[str, float]]]:
    """Vectors and per-layer statistics from paired differences pos - neg, [N, n, d] (or [N, d]) per layer.

    `center` applies to `pca` only (True: repeng's centered PCA of the differences; False: uncentered, i.e.
    the axis of largest mean squared difference, as steering-vectors' `pca_aggregator`).
    """
    if method not in VECTOR_METHODS:
        raise ValueError(f"unknown vector method {method!r}; use one of {VECTOR_METHODS}")
    vectors, stats = {}, {}
    for layer, d in diffs.items():
        per_pair = d.float().mean(1) if d.dim() == 3 else d.float()
        mean = per_pair.mean(0)
        scale = mean.norm()
        if method == "mean_diff":
            v = mean.clone()
        elif method == "pca":
            v = direction_from_diffs(per_pair, "pca", center=center) * scale
        else:
            v = _random_unit(mean.shape[0], seed, layer) * scale
        vectors[layer] = v.contiguous()
        stats[layer] = {
            "mean_diff_norm": float(scale),
            "pair_diff_norm": float(per_pair.norm(dim=-1).mean()),
            "cos_with_mean": float(v @ mean / (v.norm() * scale).clamp(min=1e-12)),
        }
    return vectors, stats


def train_vectors(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair], method: str = "pca",
                  layers: Sequence[int] | None = None, n_tokens: int | None = None, seed: int = 0,
                  batch_size: int = 16, center: bool = True,
                  cache: dict | None = None) -> SteeringVectors:
    """Read the base model's block outputs on the pairs and build one vector per layer (see module doc)."""
    if method not in VECTOR_METHODS:
        raise ValueError(f"unknown vector method {method!r}; use one of {VECTOR_METHODS}")
    layers = resolve_layers(model, layers)
    points = {layer: CapturePoint(block_name(model, layer)) for layer in layers}
    captured, n = capture_pair_activations(model, tokenizer, pairs, list(points.values()), n_tokens, batch_size,
                                            cache)
    diffs = {layer: captured[p.key][0] - captured[p.key][1] for layer, p in points.items()}
    vectors, stats = vectors_from_diffs(diffs, method, seed, center)
    for layer, p in points.items():
        pos, neg = captured[p.key]
        stats[layer]["hidden_norm"] = float(torch.cat([pos, neg]).norm(dim=-1).mean())
    meta = {"layers": layers, "n_tokens": n, "seed": seed, "center": center, "n_pairs": len(pairs),
            "model": str(getattr(model, "name_or_path", "")),
            "stats": {str(k): v for k, v in stats.items()}}
    return SteeringVectors(vectors, method, meta)


class VectorSteerer(SignedSteerer):
    """State c adds c * v_l to the output of every steered block l (all positions); c = 0 adds no hook."""

    def __init__(self, model: nn.Module, vectors: SteeringVectors, name: str | None = None,
                 coeffs: Sequence[float] | None = None):
        self.model, self.vectors = model, vectors
        self.name = name or vectors.method
        self.default_coeffs = tuple(coeffs) if coeffs is not None else DEFAULT_VECTOR_COEFFS.get(
            vectors.method, WIDE_COEFFS)
        self._placed: dict[str, Tensor] = {}
        self._placed_for: tuple | None = None

    def _deltas(self) -> dict[str, Tensor]:
        """Vectors on each block's device and dtype, moved once (not on every forward)."""
        if self._placed_for != model_place(self.model):  # first use, or the model moved / was cast
            self._placed, self._placed_for = {}, model_place(self.model)
            for layer, v in self.vectors.vectors.items():
                name = block_name(self.model, layer)
                device, dtype = module_place(self.model, name)
                self._placed[name] = v.to(device=device, dtype=dtype)
        return self._placed

    @contextmanager
    def applied(self, c: float) -> Iterator[None]:
        edits = {name: (lambda _x, out, v=v: out + c * v) for name, v in self._deltas().items()}
        with edited_outputs(self.model, edits):
            yield

    def fingerprint(self) -> str:
        vs = self.vectors.vectors
        return fingerprint((self.sign * vs[k] for k in sorted(vs)), self.vectors.method, sorted(vs))

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Save the vectors with the calibrated sign folded in (a loaded steerer starts at sign +1)."""
        signed = {k: self.sign * v for k, v in self.vectors.vectors.items()}
        return SteeringVectors(signed, self.vectors.method, self.vectors.meta).save(path)

    @classmethod
    def load(cls, model: nn.Module, path: str | Path, **kw) -> VectorSteerer:
        return cls(model, SteeringVectors.load(path), **kw)
