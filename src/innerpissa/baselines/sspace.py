""""S-space" weight steering (METHOD section 8): ΔW = U diag(Δs) Vᵀ on chosen modules, state c uses W + c ΔW.

For each chosen module (default: `self_attn.o_proj` and `mlp.down_proj` of the middle-to-late blocks),
W = U S Vᵀ, and the pairs' mean output difference m = mean(pos - neg) (last N shared tokens, base model) is
read in the U basis, mu = Uᵀ m. Two ways to turn mu into Δs:
- `fit="lstsq"` (default): Δs_i = mu_i E[x·v_i] / E[(x·v_i)²], the least-squares change of singular value i
  that makes the module's output on the pairs' own inputs x move along m. It is invariant under the SVD's
  arbitrary joint sign flip (u_i, v_i) -> (-u_i, -v_i).
- `fit="projection"`: Δs = mu literally. Its ΔW = Σ mu_i u_i v_iᵀ changes sign per component with that flip,
  so its output shift points wherever LAPACK's sign convention happens to put it; kept for comparison.
Either Δs is then scaled by one scalar so that on those inputs the mean output shift ‖ΔW x‖ equals ‖m‖:
c = 1 then pushes each module's output by one mean persona difference, the same unit as the steering
vectors. (On SmolLM2, 12 layers x 2 modules: the transcript NLL stays within 0.05 up to c = 4 and reaches
+1.7 at c = 8, so its default sweep is the wide one.) Applied through hooks (out += c ((x V) ⊙ Δs) Uᵀ), never as a
dense copy of the weights.
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
from innerpissa.baselines.vectors import WIDE_COEFFS
from innerpissa.data.pairs import ContrastivePair
from innerpissa.steering import tensor_digest

DEFAULT_MODULES = ("self_attn.o_proj", "mlp.down_proj")
SSPACE_FITS = ("lstsq", "projection")


@dataclass
class SSpaceEdit:
    """ΔW = U diag(ds) Vᵀ for one module: U [d_out, r], V [d_in, r], ds [r] (fp32, CPU)."""

    U: Tensor
    V: Tensor
    ds: Tensor

    def delta_weight(self) -> Tensor:
        """The dense ΔW [d_out, d_in] (for tests and inspection; steering never builds it)."""
        return (self.U * self.ds) @ self.V.T


@dataclass
class SSpaceEdits:
    """Edits keyed by (block index, module path inside the block), e.g. (20, 'mlp.down_proj')."""

    edits: dict[tuple[int, str], SSpaceEdit]
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        tensors = {f"{layer}.{sub}.{part}": getattr(e, part)
                   for (layer, sub), e in self.edits.items() for part in ("U", "V", "ds")}
        return save_tensors(path, tensors, {"kind": "sspace", **self.meta})

    @classmethod
    def load(cls, path: str | Path) -> SSpaceEdits:
        tensors, meta = load_tensors(path)
        if meta.pop("kind", None) != "sspace":
            raise ValueError(f"{path} does not hold S-space edits")
        keys = sorted({k.rsplit(".", 1)[0] for k in tensors})
        edits = {}
        for key in keys:
            layer, sub = key.split(".", 1)
            edits[(int(layer), sub)] = SSpaceEdit(*(tensors[f"{key}.{p}"].float() for p in ("U", "V", "ds")))
        return cls(edits, meta)


def _weight(model: nn.Module, name: str) -> Tensor:
    w = getattr(model.get_submodule(name), "weight", None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise ValueError(f"{name} has no 2-D weight (S-space steering needs a linear layer, out = W x)")
    return w.detach()


def fit_edit(weight: Tensor, out_diff: Tensor, inputs: Tensor, fit: str = "lstsq",
             rank: int | None = None) -> tuple[SSpaceEdit, dict[str, float]]:
    """One module's edit from its weight [d_out, d_in], output differences pos - neg [..., d_out] and the
    inputs it saw [..., d_in] (both sides of every pair), computed in fp32 on the weight's device and
    returned on the CPU. See the module docstring for `fit`."""
    if fit not in SSPACE_FITS:
        raise ValueError(f"unknown S-space fit {fit!r}; use one of {SSPACE_FITS}")
    dev = weight.device  # the SVD of a large model's weights is much faster where the weights live
    u, _, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    r = u.shape[1] if rank is None else min(rank, u.shape[1])
    U, V = u[:, :r].contiguous(), vh[:r].T.contiguous()
    m = out_diff.reshape(-1, out_diff.shape[-1]).to(dev, torch.float32).mean(0)
    mu = m @ U
    xv = inputs.reshape(-1, inputs.shape[-1]).to(dev, torch.float32) @ V  # [M, r]
    ds = mu * xv.mean(0) / xv.pow(2).mean(0).clamp(min=1e-12) if fit == "lstsq" else mu.clone()
    shift = (xv * ds) @ U.T  # [M, d_out]: ΔW x on every input
    alpha = m.norm() / shift.norm(dim=-1).mean().clamp(min=1e-12)
    ds = ds * alpha
    mean_shift = shift.mean(0) * alpha
    stats = {"mean_diff_norm": float(m.norm()), "scale": float(alpha), "rank": r,
             "mean_shift_cos": float(mean_shift @ m / (mean_shift.norm() * m.norm()).clamp(min=1e-12))}
    return SSpaceEdit(U.cpu(), V.cpu(), ds.cpu().contiguous()), stats


def train_sspace(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair],
                 layers: Sequence[int] | None = None, modules: Sequence[str] = DEFAULT_MODULES,
                 fit: str = "lstsq", rank: int | None = None, n_tokens: int | None = None,
                 batch_size: int = 16, cache: dict | None = None) -> SSpaceEdits:
    """Read each module's input and output on the pairs (base model) and fit its edit."""
    layers = resolve_layers(model, layers)
    names = {(layer, sub): f"{block_name(model, layer)}.{sub}" for layer in layers for sub in modules}
    weights = {key: _weight(model, name) for key, name in names.items()}  # fail before the long pass
    points = [CapturePoint(name, where) for name in names.values() for where in ("output", "input")]
    captured, n = capture_pair_activations(model, tokenizer, pairs, points, n_tokens, batch_size, cache)
    edits, stats = {}, {}
    for key, name in names.items():
        pos_out, neg_out = captured[CapturePoint(name, "output").key]
        inputs = torch.cat(captured[CapturePoint(name, "input").key])
        edits[key], stats[f"{key[0]}.{key[1]}"] = fit_edit(weights[key], pos_out - neg_out, inputs, fit, rank)
    meta = {"layers": layers, "modules": list(modules), "fit": fit, "rank": rank, "n_tokens": n,
            "n_pairs": len(pairs), "model": str(getattr(model, "name_or_path", "")), "stats": stats}
    return SSpaceEdits(edits, meta)


class SSpaceSteerer(SignedSteerer):
    """State c: every edited module computes W x + c ((x V) ⊙ Δs) Uᵀ; c = 0 adds no hook."""

    name = "sspace"

    def __init__(self, model: nn.Module, edits: SSpaceEdits, name: str | None = None,
                 coeffs: Sequence[float] | None = None):
        self.model, self.edits = model, edits
        if name:
            self.name = name
        self.default_coeffs = tuple(coeffs) if coeffs is not None else WIDE_COEFFS
        self._placed: dict[str, tuple[Tensor, Tensor]] = {}
        self._placed_for: tuple | None = None

    def _factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """(V, U diag(Δs)) per module name, on the module's device and dtype, moved once."""
        if self._placed_for != model_place(self.model):  # first use, or the model moved / was cast
            self._placed, self._placed_for = {}, model_place(self.model)
            for (layer, sub), e in self.edits.edits.items():
                name = f"{block_name(self.model, layer)}.{sub}"
                device, dtype = module_place(self.model, name)
                self._placed[name] = (e.V.to(device, dtype), (e.U * e.ds).to(device, dtype))
        return self._placed

    @contextmanager
    def applied(self, c: float) -> Iterator[None]:
        edits = {name: (lambda x, out, V=V, Us=Us: out + c * ((x.to(V.dtype) @ V) @ Us.T).to(out.dtype))
                 for name, (V, Us) in self._factors().items()}
        with edited_outputs(self.model, edits):
            yield

    def fingerprint(self) -> str:
        keys = sorted(self.edits.edits)
        parts = [t for k in keys for t in (self.edits.edits[k].U, self.edits.edits[k].V,
                                           self.sign * self.edits.edits[k].ds)]
        return tensor_digest(parts, "sspace", keys)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Save with the calibrated sign folded into Δs (a loaded steerer starts at sign +1)."""
        signed = {k: SSpaceEdit(e.U, e.V, self.sign * e.ds) for k, e in self.edits.edits.items()}
        return SSpaceEdits(signed, self.edits.meta).save(path)

    @classmethod
    def load(cls, model: nn.Module, path: str | Path, **kw) -> SSpaceSteerer:
        return cls(model, SSpaceEdits.load(path), **kw)
