"""One InnerPiSSA layer: a frozen `nn.Linear` plus a coefficient-scaled change in its top-r SVD basis.

With `W = U diag(S) V^T + W_res` (top-r triplets), the adapted layer computes

    y = W_res x + U R_u(c) diag(S_c) (V R_v(c))^T x
      = W x + U [R_u(c) diag(S_c) R_v(c)^T - diag(S)] V^T x,

the second line being what runs: the base layer plus a rank-r delta, so no dense `W_res` copy is stored and
`c = 0` skips the delta entirely. Rotations are Cayley transforms of soft-clamped skew-symmetric generators,
so R(0) = I, R is orthogonal, and R(-c) = R(c)^T; one adapter steers both ways.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from innerpissa.adapter.config import AdapterConfig

Coeff = float | Tensor


# ---------------------------------------------------------------- pure maths (tested on their own)


def skew(theta: Tensor) -> Tensor:
    """A = theta - theta^T over the last two dims: a skew-symmetric generator."""
    return theta - theta.transpose(-1, -2)


def soft_clamp(a: Tensor, max_angle: float) -> Tensor:
    """m tanh(a / m): keeps each generator entry below m radians; odd, so skew stays skew."""
    return max_angle * torch.tanh(a / max_angle)


def cayley(a: Tensor, c: Coeff) -> Tensor:
    """R(c) = (I - c A / 2)^-1 (I + c A / 2) for skew A [..., k, k].

    `c` is a float, or a tensor [B] giving a batch of rotations [B, ..., k, k].
    """
    if isinstance(c, Tensor) and c.dim() == 1:
        a = c.reshape(-1, *([1] * a.dim())).to(a.dtype) * a.unsqueeze(0)
    else:
        a = float(c) * a
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    return torch.linalg.solve(eye - a / 2, eye + a / 2)


def block_diag(blocks: Tensor) -> Tensor:
    """[..., b, k, k] -> [..., b k, b k] block-diagonal matrix."""
    *lead, b, k, _ = blocks.shape
    if b == 1:
        return blocks[..., 0, :, :]
    out = blocks.new_zeros(*lead, b * k, b * k)
    for i in range(b):
        out[..., i * k:(i + 1) * k, i * k:(i + 1) * k] = blocks[..., i, :, :]
    return out


def rotation(theta: Tensor, c: Coeff, max_angle: float) -> Tensor:
    """The r x r (or [B, r, r]) rotation at coefficient c from block generators theta [b, k, k]."""
    return block_diag(cayley(soft_clamp(skew(theta), max_angle), c))


def scaled_singular_values(s: Tensor, delta: Tensor | None, c: Coeff, mode: str) -> Tensor:
    """S_c: [r] for a float c, [B, r] for a per-example c [B]."""
    if mode == "none" or delta is None:
        return s if not isinstance(c, Tensor) else s.expand(c.shape[0], -1)
    cc = c.to(s.dtype)[:, None] if isinstance(c, Tensor) else float(c)
    if mode == "add":
        return s + cc * delta
    if mode == "add_tanh":
        return s * (1 + cc * torch.tanh(delta))
    if mode == "mult":
        return s * torch.exp(cc * delta)
    raise ValueError(f"unknown s_mode {mode!r}")


def top_r_svd(w: Tensor, r: int, kind: str, oversample: int, niter: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-r (U [d_out, r], S [r], V [d_in, r]) of w, exact or randomized (seeded)."""
    if kind == "full":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return u[:, :r].contiguous(), s[:r].contiguous(), vh[:r].T.contiguous()
    q = min(r + oversample, *w.shape)
    devices = [w.device] if w.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(w, q=q, niter=niter)
    return u[:, :r].contiguous(), s[:r].contiguous(), v[:, :r].contiguous()


# ---------------------------------------------------------------- the layers


class SteerableLinear(nn.Module):
    """A frozen `nn.Linear` plus a delta that scales with a coefficient `c` (float, or one per batch row).

    Subclasses give `delta_out(x, c)` (the extra output) and `delta_weight(c)` (the same as a dense matrix);
    this class owns the coefficient, the c = 0 shortcut, merging and the sign flip, so `steer`,
    `merge_adapter` and the trainer treat every kind of steerable layer alike.
    """

    #: whether the delta is a weight change (`delta_weight`), so it can be merged and exported as a LoRA
    mergeable: bool = True

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.coeff: Coeff = 0.0
        self.merged_coeff: float | None = None

    def delta_out(self, x: Tensor, c: Coeff) -> Tensor:
        raise NotImplementedError

    def delta_weight(self, c: float) -> Tensor:
        raise NotImplementedError

    def steered_delta(self, x: Tensor) -> Tensor | None:
        """The extra output at the current coefficient, or None when there is none (c = 0, or merged)."""
        c = self.coeff
        if self.merged_coeff is not None:
            return None  # the delta is already inside base_layer.weight
        if isinstance(c, Tensor):
            if c.dim() != 1 or c.shape[0] != x.shape[0]:
                raise ValueError(f"per-example coefficient must have shape [batch={x.shape[0]}], got {tuple(c.shape)}")
            c = c.to(device=x.device)
        elif c == 0:
            return None
        return self.delta_out(x, c)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        delta = self.steered_delta(x)
        return out if delta is None else out + delta.to(out.dtype)

    def flip_sign(self) -> None:
        """Negate the learnable parameters: the layer at c becomes the old layer at -c."""
        with torch.no_grad():
            for p in self.parameters(recurse=False):
                p.neg_()

    @torch.no_grad()
    def merge(self, c: float) -> None:
        if self.merged_coeff is not None:
            raise RuntimeError(f"layer already merged at c={self.merged_coeff}; unmerge first")
        w = self.base_layer.weight
        w.add_(self.delta_weight(c).to(w.dtype))
        self.merged_coeff = float(c)

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_coeff is None:
            return
        w = self.base_layer.weight
        w.sub_(self.delta_weight(self.merged_coeff).to(w.dtype))
        self.merged_coeff = None


class InnerPiSSALinear(SteerableLinear):
    """Wraps a frozen `nn.Linear` (kept as `base_layer`) with an InnerPiSSA delta scaled by `coeff`."""

    def __init__(self, base_layer: nn.Linear, cfg: AdapterConfig, seed: int = 0, init_svd: bool = True):
        super().__init__(base_layer)
        d_out, d_in = base_layer.weight.shape
        if cfg.r > min(d_in, d_out):
            raise ValueError(f"rank r={cfg.r} exceeds min(d_in={d_in}, d_out={d_out}) of this layer; lower r")
        self.cfg = cfg
        self.r = cfg.r
        dtype = getattr(torch, cfg.dtype)
        dev = base_layer.weight.device
        self._cache: tuple | None = None
        self._basis_cache: tuple | None = None
        self._rows_cache: tuple | None = None

        if init_svd:
            u, s, v = top_r_svd(base_layer.weight.detach().to(dtype), cfg.r, cfg.svd, cfg.svd_oversample,
                                cfg.svd_niter, seed)
        else:  # filled by load_adapter
            u, s, v = (torch.zeros(d_out, cfg.r, dtype=dtype, device=dev), torch.zeros(cfg.r, dtype=dtype, device=dev),
                       torch.zeros(d_in, cfg.r, dtype=dtype, device=dev))
        self.register_buffer("U", u, persistent=False)
        self.register_buffer("S", s, persistent=False)
        self.register_buffer("V", v, persistent=False)

        g = torch.Generator().manual_seed(seed)
        b, k = cfg.rotation_blocks, cfg.r // cfg.rotation_blocks

        def gen() -> nn.Parameter:
            return nn.Parameter((torch.randn(b, k, k, generator=g) * cfg.init_theta_std).to(dtype=dtype, device=dev))

        self.theta_v = gen() if cfg.rotate_v else None
        self.theta_u = gen() if cfg.rotate_u else None
        if cfg.s_mode != "none":
            lo, hi = cfg.init_delta_range
            self.delta = nn.Parameter((lo + (hi - lo) * torch.rand(cfg.r, generator=g)).to(dtype=dtype, device=dev))
        else:
            self.delta = None

    # -- the maths at a coefficient

    def mixing(self, c: Coeff) -> Tensor:
        """K(c) in row form, so that delta(x) = (x V) K(c) U^T:  K = R_v diag(S_c) R_u^T - diag(S)."""
        s_c = scaled_singular_values(self.S, self.delta, c, self.cfg.s_mode)  # [r] or [B, r]
        if self.theta_v is not None:
            k = rotation(self.theta_v, c, self.cfg.max_angle) * s_c.unsqueeze(-2)  # R_v diag(S_c)
        else:
            k = torch.diag_embed(s_c)
        if self.theta_u is not None:
            k = k @ rotation(self.theta_u, c, self.cfg.max_angle).transpose(-1, -2)
        return k - torch.diag(self.S)

    def _mixing_cached(self, c: float | tuple[float, ...], dtype: torch.dtype | None = None) -> Tensor:
        """Inference path: K(c) (in `dtype`) is reused until c or a parameter changes (no Cayley solve per
        forward); a tuple c gives the stack [len(c), r, r]."""
        key = (c, dtype, *[(p.data_ptr(), p._version) for p in self.parameters(recurse=False)])
        if self._cache is None or self._cache[0] != key:
            k = self.mixing(torch.tensor(c, dtype=self.S.dtype, device=self.S.device) if isinstance(c, tuple) else c)
            self._cache = (key, k if dtype is None else k.to(dtype))
        return self._cache[1]

    def _mixing_rows(self, c: Tensor, dtype: torch.dtype) -> Tensor:
        """K per row [B, r, r] for per-row coefficients c [B]: one Cayley solve per distinct coefficient (a
        sweep or a +-c batch has a few), cached between forwards at inference."""
        grad = torch.is_grad_enabled()
        if not grad and self._rows_cache is not None:  # the same coefficient tensor as the last forward
            c0, version, dt, key, per_c, rows = self._rows_cache
            if c0 is c and version == c._version and dt == dtype and per_c is self._mixing_cached(key, dtype):
                return rows
        uc, inv = torch.unique(c, return_inverse=True)
        if grad:
            return self.mixing(uc.to(self.S.dtype)).to(dtype).index_select(0, inv.reshape(-1))
        key = tuple(uc.tolist())
        per_c = self._mixing_cached(key, dtype)
        rows = per_c.index_select(0, inv.reshape(-1))
        self._rows_cache = (c, c._version, dtype, key, per_c, rows)  # holds c: `is` stays meaningful
        return rows

    @torch.no_grad()
    def delta_weight(self, c: float) -> Tensor:
        """Dense Delta W(c) = U K(c)^T V^T  [d_out, d_in], rank <= r."""
        b, a = self.lora_factors(c)
        return b @ a

    def lora_factors(self, c: float) -> tuple[Tensor, Tensor]:
        """(B [d_out, r], A [r, d_in]) with B A = Delta W(c): the adapter at c as an ordinary LoRA."""
        with torch.no_grad():
            return self.U @ self.mixing(float(c)).T, self.V.T.clone()

    def _basis_in(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(V, U^T) in `dtype`: the buffers themselves, or low-precision copies made once and kept until the
        buffers change (a bf16 model then runs its delta in bf16 without casting U and V at every call)."""
        if dtype == self.V.dtype:
            return self.V, self.U.T
        key = (dtype, self.V.device, self.V.data_ptr(), self.V._version, self.U.data_ptr(), self.U._version)
        if self._basis_cache is None or self._basis_cache[0] != key:
            self._basis_cache = (key, self.V.to(dtype), self.U.T.to(dtype).contiguous())
        return self._basis_cache[1], self._basis_cache[2]

    def delta_out(self, x: Tensor, c: Coeff) -> Tensor:
        """(x V) K(c) U^T, with K per example when c is a tensor [B].

        Inputs in a low-precision float dtype (bf16/fp16 models) run the three small matmuls in that dtype
        with K(c) computed in the adapter's dtype and cast; fp32 inputs run exactly as the adapter's dtype.
        c = 0 stays exact either way (K(0) = 0, and a scalar c = 0 skips the delta).
        """
        low = x.dtype in (torch.bfloat16, torch.float16) and x.dtype != self.V.dtype
        dtype = x.dtype if low else self.V.dtype
        v, ut = self._basis_in(dtype)
        if isinstance(c, Tensor):
            k = self._mixing_rows(c, dtype)  # [B, r, r]
            z = x.to(dtype) @ v
            z = (z.unsqueeze(1) @ k).squeeze(1) if z.dim() == 2 else z @ k
        else:
            k = self.mixing(c).to(dtype) if torch.is_grad_enabled() else self._mixing_cached(float(c), dtype)
            z = x.to(dtype) @ v @ k
        return z @ ut

    def extra_repr(self) -> str:
        d_out, d_in = self.base_layer.weight.shape
        return (f"d_in={d_in}, d_out={d_out}, r={self.r}, s_mode={self.cfg.s_mode}, "
                f"rotate_v={self.cfg.rotate_v}, rotate_u={self.cfg.rotate_u}")
