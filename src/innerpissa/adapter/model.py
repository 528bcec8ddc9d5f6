"""Model-level adapter operations: attach, steer, merge, sign flip, detach.

`attach` swaps each selected `nn.Linear` for an `InnerPiSSALinear` at the same module path, so module names
(and hence export names) stay those of the base model, with the original layer kept as `.base_layer`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from innerpissa.adapter.config import AdapterConfig, select_blocks
from innerpissa.adapter.layer import Coeff, InnerPiSSALinear, SteerableLinear


def find_blocks(model: nn.Module) -> tuple[str, int]:
    """The transformer block list: the longest `nn.ModuleList` in the model (name, length)."""
    best: tuple[str, int] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (best is None or len(mod) > best[1]):
            best = (name, len(mod))
    if best is None:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of blocks; not a supported decoder")
    return best


def target_names(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Full module names `attach` would adapt, checked: non-empty, all nn.Linear (or already wrapped)."""
    blocks_name, n_blocks = find_blocks(model)
    chosen = select_blocks(n_blocks, cfg)
    prefixes = tuple(f"{blocks_name}.{i}." for i in chosen)
    names, seen_suffixes = [], set()
    for name, mod in model.named_modules():
        if not name.startswith(f"{blocks_name}."):
            continue
        seen_suffixes.add(name.rsplit(".", 1)[-1])
        if name.endswith(".base_layer") or not name.startswith(prefixes):
            continue
        if any(name == p + s or name.endswith("." + s) for s in cfg.target_modules for p in prefixes):
            if not isinstance(mod, nn.Linear | SteerableLinear):
                raise TypeError(
                    f"module {name} is a {type(mod).__name__}, not nn.Linear; InnerPiSSA needs nn.Linear "
                    "projections (GPT-2's Conv1D is not supported: use a Llama/Qwen/Gemma/Mistral-style model)"
                )
            names.append(name)
    if not names:
        raise ValueError(
            f"no module matches target_modules={list(cfg.target_modules)} in blocks {chosen} of {blocks_name}; "
            f"module names in the blocks end with: {sorted(seen_suffixes)}"
        )
    return names


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def attach(model: nn.Module, config: AdapterConfig | None = None, init_svd: bool = True) -> nn.Module:
    """Wrap the selected linear layers of `model` in place with InnerPiSSA layers; returns the model.

    The base weights are frozen; only the adapter's parameters require grad. At c = 0 (the default
    coefficient) the model computes exactly what it computed before.
    """
    cfg = config or AdapterConfig()
    if adapter_layers(model):
        raise RuntimeError("model already has an InnerPiSSA adapter attached; call detach_adapter(model) first")
    names = target_names(model, cfg)
    for name in names:  # validate every target before wrapping any: never a half-attached model
        d_out, d_in = model.get_submodule(name).weight.shape
        if cfg.r > min(d_in, d_out):
            raise ValueError(f"rank r={cfg.r} exceeds min(d_in={d_in}, d_out={d_out}) of {name}; lower r "
                             f"to at most {min(d_in, d_out)}")
    for p in model.parameters():
        p.requires_grad_(False)
    for i, name in enumerate(names):
        base = model.get_submodule(name)
        _set_module(model, name, InnerPiSSALinear(base, cfg, seed=cfg.seed * 100_003 + i, init_svd=init_svd))
    return model


def adapter_layers(model: nn.Module) -> dict[str, SteerableLinear]:
    """All coefficient-steered layers of the model (InnerPiSSA, or a baseline's) by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SteerableLinear)}


def _layers_or_raise(model: nn.Module) -> dict[str, SteerableLinear]:
    layers = adapter_layers(model)
    if not layers:
        raise RuntimeError("model has no InnerPiSSA adapter; call innerpissa.attach(model, config) or load_adapter first")
    return layers


def adapter_config(model: nn.Module) -> AdapterConfig:
    layer = next(iter(_layers_or_raise(model).values()))
    if not isinstance(layer, InnerPiSSALinear):
        raise TypeError(f"the attached layers are {type(layer).__name__}, not an InnerPiSSA adapter")
    return layer.cfg


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of the adapter (rotation generators and singular-value changes)."""
    return [p for layer in _layers_or_raise(model).values() for p in layer.parameters(recurse=False)]


def _check_coeff(model: nn.Module, c: Coeff) -> None:
    """Reject NaN/inf coefficients; warn once per model when |c| exceeds twice the trained range."""
    if isinstance(c, Tensor):
        top = float(c.detach().abs().max()) if c.numel() else 0.0
    else:
        top = abs(c)
    if not math.isfinite(top):
        raise ValueError(f"steering coefficient must be finite, got {c}")
    rng = getattr(model, "_innerpissa_coeff_range", None)
    limit = 2 * max(abs(v) for v in rng) if rng else None
    if limit and top > limit and not getattr(model, "_innerpissa_range_warned", False):
        model._innerpissa_range_warned = True
        warnings.warn(f"steering at |c| = {top:g}, more than twice the range the adapter was trained on "
                      f"({rng[0]:g} to {rng[1]:g}); expect incoherent output", stacklevel=4)


@contextmanager
def steer(model: nn.Module, c: Coeff) -> Iterator[nn.Module]:
    """Inside the context every adapter layer runs at coefficient `c`; the previous one is always restored.

    `c` is a float, or a 1-D tensor with one coefficient per batch row (so c = -1 and c = +1 share a batch).
    """
    layers = _layers_or_raise(model)
    if isinstance(c, Tensor):
        if c.dim() != 1:
            raise ValueError(f"a tensor coefficient must be 1-D (one per batch row), got shape {tuple(c.shape)}")
    else:
        c = float(c)
    _check_coeff(model, c)
    merged = [n for n, layer in layers.items() if layer.merged_coeff is not None]
    if merged and not (not isinstance(c, Tensor) and c == 0):
        raise RuntimeError(f"adapter is merged (at c={layers[merged[0]].merged_coeff}); unmerge_adapter(model) before steering")
    previous = {n: layer.coeff for n, layer in layers.items()}
    try:
        for layer in layers.values():
            layer.coeff = c
        yield model
    finally:
        for n, layer in layers.items():
            layer.coeff = previous[n]


def merge_adapter(model: nn.Module, c: float) -> nn.Module:
    """Add Delta W(c) into every wrapped weight, so a plain forward computes the adapter at c."""
    for layer in _layers_or_raise(model).values():
        layer.merge(c)
    return model


def unmerge_adapter(model: nn.Module) -> nn.Module:
    """Subtract the merged Delta W again (exact up to float rounding)."""
    for layer in _layers_or_raise(model).values():
        layer.unmerge()
    return model


def flip_sign(model: nn.Module) -> nn.Module:
    """Negate every learnable parameter: afterwards the adapter at c equals the previous one at -c."""
    for layer in _layers_or_raise(model).values():
        layer.flip_sign()
    return model


def detach_adapter(model: nn.Module, merge_at: float | None = None) -> nn.Module:
    """Remove the adapter, putting the original linear layers back; with `merge_at`, bake in Delta W(c) first."""
    for name, layer in _layers_or_raise(model).items():
        if merge_at is not None and layer.merged_coeff is None:
            layer.merge(merge_at)
        elif merge_at is None:
            layer.unmerge()
        _set_module(model, name, layer.base_layer)
    return model


@torch.no_grad()
def delta_weights(model: nn.Module, c: float) -> dict[str, Tensor]:
    """Delta W(c) of every wrapped layer, by module name."""
    return {n: layer.delta_weight(c) for n, layer in _layers_or_raise(model).items()}
