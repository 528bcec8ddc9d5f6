"""The adapter's configuration: one typed dataclass, every field with help text (the CLI is built from it)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Literal

SMode = Literal["add", "add_tanh", "mult", "none"]
SvdKind = Literal["full", "randomized"]


@dataclass
class AdapterConfig:
    """Where and how InnerPiSSA adapts a model (METHOD section 2)."""

    r: int = 32
    """Rank: number of top singular triplets (U, S, V) of each weight that the adapter steers."""

    target_modules: tuple[str, ...] = ("o_proj", "down_proj")
    """Module name suffixes to adapt; the default are the residual-stream writers of Llama/Qwen blocks."""

    layers: tuple[int, ...] | None = None
    """Explicit block indices to adapt; when given, the depth range and `n_layers` are ignored."""

    layer_start_frac: float = 0.3
    """First adapted block as a fraction of depth (0.3 -> block round(0.3 L))."""

    layer_end_offset: int = 3
    """Blocks are taken before L - layer_end_offset (the last blocks mostly format the output)."""

    n_layers: int = 8
    """How many blocks, evenly spaced over the depth range, to adapt (<= 0 for all of them)."""

    rotate_v: bool = True
    """Learn a Cayley rotation of the input singular vectors V (the method's main lever)."""

    rotate_u: bool = False
    """Also rotate the output singular vectors U (unstable in the journal; off by default)."""

    rotation_blocks: int = 1
    """Split each r x r rotation into this many diagonal blocks (OFT-style; cheaper for large r)."""

    s_mode: SMode = "add"
    """Singular-value change at c: add S + c d | add_tanh S (1 + c tanh d) | mult S exp(c d) | none."""

    max_angle: float = 0.3
    """Soft clamp on the rotation generator, m tanh(A / m), in radians."""

    select: Literal["top", "data"] = "top"
    """Which r singular directions to keep: the `top` r by S (plain PiSSA), or `data`: the r/2 + r/2 whose
    S-normalised output coordinates vary most over the positive / negative training prompts (the author's
    cho_var_snorm; the trainer chooses them from its pairs right after attaching, see adapter.select)."""

    svd: SvdKind = "full"
    """SVD used to find the top-r triplets: exact `full`, or `randomized` (torch.svd_lowrank) for big layers."""

    svd_oversample: int = 16
    """Extra columns for randomized SVD (q = r + oversample)."""

    svd_niter: int = 4
    """Power iterations for randomized SVD."""

    init_theta_std: float = 2e-3
    """Std of the initial rotation generator; small but non-zero so +c and -c differ at step 0."""

    init_delta_range: tuple[float, float] = (1e-5, 1e-3)
    """Uniform range of the initial singular-value change."""

    dtype: Literal["float32", "float64"] = "float32"
    """Dtype of the frozen U, S, V buffers and the trainable parameters."""

    seed: int = 0
    """Seed for the initial parameters and the randomized SVD."""

    def __post_init__(self) -> None:
        if not isinstance(self.rotation_blocks, int) or self.rotation_blocks < 1:
            raise ValueError(f"rotation_blocks must be an integer >= 1, got {self.rotation_blocks!r}")
        self.target_modules = tuple(self.target_modules)
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
        self.init_delta_range = tuple(self.init_delta_range)  # type: ignore[assignment]
        if self.r < 1:
            raise ValueError(f"rank r must be >= 1, got {self.r}")
        if self.r % self.rotation_blocks:
            raise ValueError(f"r={self.r} must be divisible by rotation_blocks={self.rotation_blocks}")
        if self.s_mode not in ("add", "add_tanh", "mult", "none"):
            raise ValueError(f"s_mode must be add, add_tanh, mult or none, got {self.s_mode!r}")
        if self.select not in ("top", "data"):
            raise ValueError(f"select must be 'top' or 'data', got {self.select!r}")
        if self.svd not in ("full", "randomized"):
            raise ValueError(f"svd must be 'full' or 'randomized', got {self.svd!r}")
        if not self.rotate_v and not self.rotate_u and self.s_mode == "none":
            raise ValueError("nothing to learn: rotate_v, rotate_u are off and s_mode is 'none'")
        if self.max_angle <= 0:
            raise ValueError(f"max_angle must be > 0, got {self.max_angle}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["layers"] = None if self.layers is None else list(self.layers)
        d["init_delta_range"] = list(self.init_delta_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AdapterConfig:
        """The config a saved JSON describes; every field's type is checked (a `ValueError` names the field)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected an object of AdapterConfig fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown AdapterConfig fields {sorted(unknown)}; known: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            if not _fits(v, hints[k]):
                raise ValueError(f"field {k!r} is {v!r} ({type(v).__name__}); expected {_type_name(hints[k])}")
        return cls(**d)


def _fits(v, tp) -> bool:
    """Whether JSON value `v` fits the annotation `tp` (tuples as lists; an int is a float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return v is None
    if origin is typing.Literal:
        return v in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if origin is tuple:
        if not isinstance(v, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(x, args[0]) for x in v)
        return len(v) == len(args) and all(_fits(x, a) for x, a in zip(v, args, strict=True))
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    return True


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return (f"a list of {_type_name(args[0])}" if len(args) == 2 and args[1] is Ellipsis
                else f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def select_blocks(n_blocks: int, cfg: AdapterConfig) -> list[int]:
    """Block indices to adapt: explicit `layers`, or `n_layers` evenly spaced in [0.3 L, L - 3).

    For very shallow models the range is clamped so at least one block is chosen.
    """
    if cfg.layers is not None:
        bad = [i for i in cfg.layers if not -n_blocks <= i < n_blocks]
        if bad:
            raise ValueError(f"layers {bad} out of range for a model with {n_blocks} blocks")
        return sorted({i % n_blocks for i in cfg.layers})
    start = min(round(cfg.layer_start_frac * n_blocks), n_blocks - 1)
    stop = max(n_blocks - cfg.layer_end_offset, start + 1)
    span = list(range(start, stop))
    if cfg.n_layers <= 0 or cfg.n_layers >= len(span):
        return span
    step = (len(span) - 1) / (cfg.n_layers - 1) if cfg.n_layers > 1 else 0
    return sorted({span[round(i * step)] for i in range(cfg.n_layers)})

