"""Steering vectors on the residual stream: PCA (repeng 0.4.0's `ControlVector.train`), mean difference (CAA)
and a random control.

`pca` (default `style="repeng"`) is repeng's vector, checked against numbers from repeng itself
(tests/fixtures/repeng_0.4.0_tiny.json):
- read: `hidden_states[l + 1]` of a forward with `output_hidden_states=True` at the last real token of each
  prompt (repeng's layer indexing: layer l is decoder block l's output, except that transformers reports the
  last block after the final norm, which repeng therefore reads there too);
- direction: the first principal axis of the per-pair differences pos - neg, centered (`center=True`,
  repeng's default `pca_diff`) or of the pair-centered hidden states (`center=False`, its `pca_center`, which
  is the uncentered axis of the differences);
- sign: repeng's vote: project the positive and negative prompts, flip if more pairs have the positive one
  lower; norm 1 (repeng's unit vectors).
Applied like repeng's `ControlModel.set_control(vector, coeff)`: state c adds c * v to block l's output at
every position (repeng masks left padding, which attention ignores anyway), so c is repeng's coefficient.
Because a unit vector's coefficient is in hidden-state units, the default sweep and the calibration push are
scaled by `coeff_unit`, the layers' mean norm of the last-token mean difference (one mean persona difference).

`style="v0"` keeps the project's earlier "repeng-style" variant for the record: block outputs averaged over
the last N shared tokens (default 4), sign aligned with the mean difference, scaled to its norm. On the
same pairs its cosine with repeng's vector was 0.15-0.95 (docs/RESULTS.md).

`mean_diff` (CAA) and `random` read the block outputs on the last N shared tokens of every pair (helper
`capture_pair_activations`, left padding, masks respected): v = mean over pairs of (pos - neg),
token-averaged per pair; `random` is a seeded random unit direction scaled to the norm of the mean
difference. Both have their layer's mean-difference norm, so c = 1 moves each steered block's output by one
mean persona difference. State c adds c * v through hooks that `at(c)` always removes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from innerpissa.anatomy import CapturePoint, block_name
from innerpissa.baselines.common import (
    SignedSteerer,
    capture_pair_activations,
    edited_outputs,
    load_tensors,
    model_place,
    module_place,
    resolve_layers,
    save_tensors,
)
from innerpissa.data.pairs import ContrastivePair
from innerpissa.steering import tensor_digest
from innerpissa.train.directions import direction_from_diffs

VECTOR_METHODS = ("pca", "mean_diff", "random")
PCA_STYLES = ("repeng", "v0")
# Coefficients are in units of the layer's mean persona difference. Measured on SmolLM2-135M with the
# default 12 layers (next-token NLL of a chat transcript, 3.07 at c = 0): mean_diff 3.65 / 5.11 / 8.14 at
# c = 1 / 2 / 4, random 3.20 / 3.98 / 7.83 at c = 1 / 4 / 8. Each default sweep is geometric and reaches past
# the point where coherence breaks, so the harness (by ΔNLL) finds each method's usable range.
NARROW_COEFFS = (-8.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
WIDE_COEFFS = (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_VECTOR_COEFFS = {"mean_diff": NARROW_COEFFS, "pca": NARROW_COEFFS, "random": WIDE_COEFFS}


def scaled_coeffs(unit: float, coeffs: Sequence[float] = NARROW_COEFFS) -> tuple[float, ...]:
    """A sweep in mean-difference units turned into coefficients of a unit vector (3 significant digits)."""
    return tuple(float(f"{k * unit:.3g}") for k in coeffs)


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


def repeng_direction(pos: Tensor, neg: Tensor, center: bool = True) -> Tensor:
    """repeng 0.4.0's direction for one layer from last-token hidden states pos, neg [N, d] (unit, fp32).

    `center=True`: `pca_diff`, the first principal axis of pos - neg (sklearn's PCA centers it);
    `center=False`: `pca_center`, PCA of the hidden states centered on each pair's midpoint, i.e. the
    uncentered axis of the differences. The sign follows sklearn's convention (largest entry positive), then
    repeng's vote: negated if more pairs project the positive prompt below the negative one.
    """
    if pos.shape != neg.shape or pos.dim() != 2:
        raise ValueError(f"pos and neg must both be [N, d], got {tuple(pos.shape)} and {tuple(neg.shape)}")
    p, n = pos.double(), neg.double()
    if center:
        x = p - n
    else:
        mid = (p + n) / 2
        x = torch.cat([p - mid, n - mid])
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[0]
    v = v * torch.sign(v[v.abs().argmax()])
    lower = (p @ v < n @ v).double().mean()
    higher = (p @ v > n @ v).double().mean()
    if lower > higher:
        v = -v
    return v.float().contiguous()


def capture_last_token(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair], layers: Sequence[int],
                       batch_size: int = 16, cache: dict | None = None) -> dict[int, tuple[Tensor, Tensor]]:
    """(pos, neg) [N, d] fp32 on CPU per layer: `hidden_states[layer + 1]` at each prompt's last real token,
    read as repeng reads them (see the module doc), through the one capture loop."""
    points = {layer: CapturePoint(f"hidden_states.{layer + 1}") for layer in layers}
    captured, _ = capture_pair_activations(model, tokenizer, pairs, list(points.values()), 1, batch_size, cache,
                                           shared_tail=False)
    return {layer: (captured[p.key][0][:, 0], captured[p.key][1][:, 0]) for layer, p in points.items()}


def repeng_vectors(captured: dict[int, tuple[Tensor, Tensor]], center: bool = True,
                   ) -> tuple[dict[int, Tensor], dict[int, dict[str, float]]]:
    """repeng's unit vectors and per-layer statistics from last-token (pos, neg) [N, d] per layer."""
    vectors, stats = {}, {}
    for layer, (pos, neg) in captured.items():
        v = repeng_direction(pos, neg, center)
        diff = pos - neg
        mean = diff.mean(0)
        vectors[layer] = v
        stats[layer] = {
            "mean_diff_norm": float(mean.norm()),
            "pair_diff_norm": float(diff.norm(dim=-1).mean()),
            "cos_with_mean": float(v @ mean / mean.norm().clamp(min=1e-12)),
            "hidden_norm": float(torch.cat([pos, neg]).norm(dim=-1).mean()),
        }
    return vectors, stats


def train_vectors(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair], method: str = "pca",
                  layers: Sequence[int] | None = None, n_tokens: int | None = None, seed: int = 0,
                  batch_size: int = 16, center: bool = True, cache: dict | None = None,
                  style: str = "repeng") -> SteeringVectors:
    """Read the base model's hidden states on the pairs and build one vector per layer (see module doc).

    `style` applies to `pca` only: "repeng" (default, repeng 0.4.0's vector; it reads the last token, so
    `n_tokens` must be None or 1) or "v0" (the earlier project variant, kept for the record).
    """
    if method not in VECTOR_METHODS:
        raise ValueError(f"unknown vector method {method!r}; use one of {VECTOR_METHODS}")
    if style not in PCA_STYLES:
        raise ValueError(f"unknown PCA style {style!r}; use one of {PCA_STYLES}")
    layers = resolve_layers(model, layers)
    common = {"layers": layers, "seed": seed, "center": center, "n_pairs": len(pairs),
              "model": str(getattr(model, "name_or_path", ""))}
    if method == "pca" and style == "repeng":
        if n_tokens not in (None, 1):
            raise ValueError(f"repeng's PCA reads the last token only, got n_tokens={n_tokens}; "
                             "pass style='v0' to average several tokens")
        vectors, stats = repeng_vectors(capture_last_token(model, tokenizer, pairs, layers, batch_size, cache),
                                        center)
        unit = sum(st["mean_diff_norm"] for st in stats.values()) / len(stats)
        meta = {**common, "style": style, "n_tokens": 1, "coeff_unit": unit,
                "stats": {str(k): v for k, v in stats.items()}}
        return SteeringVectors(vectors, method, meta)
    points = {layer: CapturePoint(block_name(model, layer)) for layer in layers}
    captured, n = capture_pair_activations(model, tokenizer, pairs, list(points.values()), n_tokens, batch_size,
                                            cache)
    diffs = {layer: captured[p.key][0] - captured[p.key][1] for layer, p in points.items()}
    vectors, stats = vectors_from_diffs(diffs, method, seed, center)
    for layer, p in points.items():
        pos, neg = captured[p.key]
        stats[layer]["hidden_norm"] = float(torch.cat([pos, neg]).norm(dim=-1).mean())
    meta = {**common, "n_tokens": n, "stats": {str(k): v for k, v in stats.items()}}
    if method == "pca":
        meta["style"] = style
    return SteeringVectors(vectors, method, meta)


class VectorSteerer(SignedSteerer):
    """State c adds c * v_l to the output of every steered block l (all positions); c = 0 adds no hook."""

    def __init__(self, model: nn.Module, vectors: SteeringVectors, name: str | None = None,
                 coeffs: Sequence[float] | None = None):
        self.model, self.vectors = model, vectors
        self.name = name or vectors.method
        unit = vectors.meta.get("coeff_unit")
        if coeffs is not None and unit:  # a given sweep is in mean-difference units for unit vectors too,
            self.default_coeffs = scaled_coeffs(float(unit), coeffs)  # so every vector sweeps the same pushes
        elif coeffs is not None:
            self.default_coeffs = tuple(coeffs)
        elif unit:  # unit vectors (repeng's): the narrow sweep in mean-difference units
            self.default_coeffs = scaled_coeffs(float(unit))
        else:
            self.default_coeffs = DEFAULT_VECTOR_COEFFS.get(vectors.method, WIDE_COEFFS)
        #: the push `calibrate_sign` probes at by default: one mean persona difference
        self.calibration_coeff = float(unit) if unit else 1.0
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

    per_row_coeffs = True

    @contextmanager
    def applied(self, c: float | Tensor) -> Iterator[None]:
        """Block outputs get c * v; a 1-D tensor c puts batch row i at c[i]."""
        edits = {}
        for name, v in self._deltas().items():
            if isinstance(c, Tensor):
                cc = c.to(device=v.device, dtype=v.dtype)
                edits[name] = lambda _x, out, v=v, cc=cc: out + cc.view(-1, *([1] * (out.dim() - 1))) * v
            else:
                edits[name] = lambda _x, out, v=v: out + c * v
        with edited_outputs(self.model, edits):
            yield

    def fingerprint(self) -> str:
        vs = self.vectors.vectors
        return tensor_digest((self.sign * vs[k] for k in sorted(vs)), self.vectors.method, sorted(vs))

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Save the vectors with the calibrated sign folded in (a loaded steerer starts at sign +1)."""
        signed = {k: self.sign * v for k, v in self.vectors.vectors.items()}
        return SteeringVectors(signed, self.vectors.method, self.vectors.meta).save(path)

    @classmethod
    def load(cls, model: nn.Module, path: str | Path, **kw) -> VectorSteerer:
        return cls(model, SteeringVectors.load(path), **kw)
