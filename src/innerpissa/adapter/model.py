"""Model-level adapter operations: attach, steer, merge, sign flip, detach, for one or several named adapters.

`attach` swaps each selected `nn.Linear` for an `AdapterStack` at the same module path (module names, and
hence export names, stay those of the base model; the original layer is kept as `.base_layer`) and adds an
`InnerPiSSALinear` under the adapter's name. A second adapter on the same module joins the same stack and
its delta adds to the first. Without a `name` everything acts on the single adapter `"default"`, so the
one-adapter API is unchanged.
"""

from __future__ import annotations

import contextvars
import math
import numbers
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from innerpissa.adapter.config import AdapterConfig, select_blocks
from innerpissa.adapter.layer import Coeff, InnerPiSSALinear, SteerableLinear
from innerpissa.adapter.stack import DEFAULT_ADAPTER, AdapterStack, check_adapter_name
from innerpissa.anatomy import decoder_blocks
from innerpissa.errors import SteeringConflict

Coeffs = Coeff | Mapping[str, Coeff]
"""One coefficient (single adapter), or coefficients by adapter name (unnamed adapters stay at 0)."""


def target_names(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Full module names `attach` would adapt, checked: non-empty, all nn.Linear (or already wrapped)."""
    blocks_name, n_blocks = decoder_blocks(model)
    chosen = select_blocks(n_blocks, cfg)
    prefixes = tuple(f"{blocks_name}.{i}." for i in chosen)
    names, seen_suffixes, inside = [], set(), None
    for name, mod in model.named_modules():
        if not name.startswith(f"{blocks_name}."):
            continue
        if inside is not None and name.startswith(inside):
            continue  # the base layer and the components inside an adapter stack
        inside = f"{name}." if isinstance(mod, AdapterStack | SteerableLinear) else None
        seen_suffixes.add(name.rsplit(".", 1)[-1])
        if not name.startswith(prefixes):
            continue
        if any(name == p + s or name.endswith("." + s) for s in cfg.target_modules for p in prefixes):
            if not isinstance(mod, nn.Linear | SteerableLinear | AdapterStack):
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


def base_linear(module: nn.Module) -> nn.Linear:
    """The frozen `nn.Linear` at a module path, whether or not adapters wrap it."""
    return module.base_layer if isinstance(module, AdapterStack | SteerableLinear) else module


def _components(model: nn.Module) -> list[tuple[str, str, SteerableLinear]]:
    """(module name, adapter name, component) for every steerable component, in module order.

    A bare `SteerableLinear` placed at a module path (not in a stack) counts as the adapter "default".
    """
    out, inside = [], None
    for name, mod in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if isinstance(mod, AdapterStack):
            out.extend((name, a, comp) for a, comp in mod.adapters.items())
            inside = f"{name}."
        elif isinstance(mod, SteerableLinear):
            out.append((name, DEFAULT_ADAPTER, mod))
            inside = f"{name}."
    return out


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters attached to `model`, sorted."""
    return sorted({a for _, a, _ in _components(model)})


def _unknown(name: str, known: list[str]) -> ValueError:
    return ValueError(f"model has no adapter named {name!r}; attached adapters: {known}")


def _require_adapter(model: nn.Module) -> list[str]:
    """The attached adapters' names; a RuntimeError saying how to attach one when there is none."""
    known = adapter_names(model)
    if not known:
        raise RuntimeError("model has no InnerPiSSA adapter; call innerpissa.attach(model, config) or load_adapter first")
    return known


def _resolve_name(model: nn.Module, name: str | None) -> str:
    """`name` checked against the attached adapters; None means the only one (an error if there are several)."""
    known = _require_adapter(model)
    if name is None:
        if len(known) > 1:
            raise ValueError(f"model has several adapters {known}; say which one with name=..., or give "
                             f"coefficients by name, e.g. {{{known[0]!r}: 1.0}}")
        return known[0]
    if name not in known:
        raise _unknown(name, known)
    return name


def add_component(model: nn.Module, module_name: str, adapter_name: str, component: SteerableLinear) -> None:
    """Put `component` (built on this module's base `nn.Linear`) under `adapter_name` at `module_name`."""
    mod = model.get_submodule(module_name)
    if isinstance(mod, AdapterStack):
        stack = mod
    else:
        stack = AdapterStack(base_linear(mod))
        if isinstance(mod, SteerableLinear):  # a bare layer joins the new stack as "default"
            stack.add(DEFAULT_ADAPTER, mod)
        _set_module(model, module_name, stack)
    stack.add(adapter_name, component)


def freeze_base(model: nn.Module) -> None:
    """requires_grad False on every parameter that belongs to no adapter (attached adapters keep theirs)."""
    keep = {id(p) for _, _, comp in _components(model) for p in comp.parameters(recurse=False)}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)


def check_attachable(model: nn.Module, name: str) -> None:
    """Refuse to attach an adapter called `name` where one of that name exists or an adapter is merged."""
    check_adapter_name(name)
    if name in adapter_names(model):
        raise RuntimeError(f"model already has an adapter named {name!r}; call detach_adapter(model, name={name!r}) "
                           "first, or attach under another name")
    if any(comp.merged_coeff is not None for _, _, comp in _components(model)):
        raise RuntimeError("an adapter is merged into the weights; unmerge_adapter(model) before attaching another")


def attach(model: nn.Module, config: AdapterConfig | None = None, init_svd: bool = True,
           name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Wrap the selected linear layers of `model` in place with an InnerPiSSA adapter called `name`.

    The base weights are frozen; only adapters' parameters require grad. At c = 0 (the default coefficient)
    the model computes exactly what it computed before. Attaching under a new name adds a second adapter;
    where both wrap the same module their deltas add, and each is steered by its own coefficient.
    """
    cfg = config or AdapterConfig()
    check_attachable(model, name)
    names = target_names(model, cfg)
    for mname in names:  # validate every target before wrapping any: never a half-attached model
        d_out, d_in = base_linear(model.get_submodule(mname)).weight.shape
        if cfg.r > min(d_in, d_out):
            raise ValueError(f"rank r={cfg.r} exceeds min(d_in={d_in}, d_out={d_out}) of {mname}; lower r "
                             f"to at most {min(d_in, d_out)}")
    freeze_base(model)
    for i, mname in enumerate(names):
        base = base_linear(model.get_submodule(mname))
        layer = InnerPiSSALinear(base, cfg, seed=cfg.seed * 100_003 + i, init_svd=init_svd)
        add_component(model, mname, name, layer)
    return model


def adapter_layers(model: nn.Module, name: str | None = None) -> dict[str, SteerableLinear]:
    """Coefficient-steered layers (InnerPiSSA, or a baseline's) by module name.

    With `name`, the layers of that adapter. Without, those of every adapter: keyed by module name when
    one adapter is attached, by "module:adapter" when there are several. Empty when there is none.
    """
    comps = _components(model)
    if name is not None:
        known = sorted({a for _, a, _ in comps})
        if name not in known:
            raise _unknown(name, known)
        return {m: comp for m, a, comp in comps if a == name}
    several = len({a for _, a, _ in comps}) > 1
    return {(f"{m}:{a}" if several else m): comp for m, a, comp in comps}


def _layers_or_raise(model: nn.Module, name: str | None = None) -> dict[str, SteerableLinear]:
    """The layers of adapter `name` (None: the only one) by module name; a clear error when there is none."""
    return adapter_layers(model, _resolve_name(model, name))


def adapter_config(model: nn.Module, name: str | None = None) -> AdapterConfig:
    layer = next(iter(_layers_or_raise(model, name).values()))
    if not isinstance(layer, InnerPiSSALinear):
        raise TypeError(f"the attached layers are {type(layer).__name__}, not an InnerPiSSA adapter")
    return layer.cfg


def adapter_parameters(model: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """The trainable parameters (rotation generators and singular-value changes) of adapter `name`, or of
    every attached adapter when `name` is None."""
    _require_adapter(model)
    layers = adapter_layers(model, name)
    return [p for layer in layers.values() for p in layer.parameters(recurse=False)]


def _check_coeff(c: Coeff, what: str) -> Coeff:
    if isinstance(c, Tensor):
        if c.dim() != 1:
            raise ValueError(f"a tensor coefficient{what} must be 1-D (one per batch row), got shape {tuple(c.shape)}")
        if c.is_meta:
            raise ValueError(f"a tensor coefficient{what} is on the meta device (it has no values); give a real tensor")
        if c.dtype == torch.bool or c.is_complex():
            raise TypeError(f"a tensor coefficient{what} must hold real numbers, got dtype {c.dtype}; use e.g. "
                            "torch.tensor([1.0, -1.0])")
        return c
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise TypeError(f"a steering coefficient{what} must be a real number or a 1-D tensor, got "
                        f"{type(c).__name__} {c!r}")
    return float(c)


def resolve_coeffs(model: nn.Module, c: Coeffs) -> dict[str, Coeff]:
    """A coefficient for every attached adapter: a plain `c` goes to the only adapter (an error naming them
    when there are several); a mapping gives coefficients by name, and adapters it does not name get 0."""
    known = _require_adapter(model)
    if isinstance(c, Mapping):
        unknown = [n for n in c if n not in known]
        if unknown:
            raise ValueError(f"no adapter named {unknown[0]!r} on this model; attached adapters: {known}")
        out = {n: _check_coeff(c.get(n, 0.0), f" for {n!r}") for n in known}
    else:
        if len(known) > 1:
            raise ValueError(f"model has several adapters {known}; give coefficients by name, "
                             f"e.g. steer(model, {{{known[0]!r}: 1.0, {known[1]!r}: 0.0}})")
        out = {known[0]: _check_coeff(c, "")}
    sizes = {n: v.shape[0] for n, v in out.items() if isinstance(v, Tensor)}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"per-example coefficients must all have the batch size; got lengths {sizes}")
    return out


def _nonzero(c: Coeff) -> bool:
    return isinstance(c, Tensor) or c != 0


def _check_range(model: nn.Module, adapter: str, c: Coeff) -> None:
    """Reject NaN/inf coefficients; warn once per model when |c| exceeds twice the range `adapter` was
    trained on (recorded in its saved JSON)."""
    if isinstance(c, Tensor):
        top = float(c.detach().abs().max()) if c.numel() else 0.0
    else:
        top = abs(c)
    if not math.isfinite(top):
        raise ValueError(f"steering coefficient must be finite, got {c}")
    rng = (getattr(model, "_innerpissa_coeff_range", None) or {}).get(adapter)
    limit = 2 * max(abs(v) for v in rng) if rng else None
    if limit and top > limit and not getattr(model, "_innerpissa_range_warned", False):
        model._innerpissa_range_warned = True
        warnings.warn(f"steering adapter {adapter!r} at |c| = {top:g}, more than twice the range it was trained "
                      f"on ({rng[0]:g} to {rng[1]:g}); expect incoherent output", stacklevel=4)


#: per model: [owner token, depth] while some context steers it (guarded by _STEER_LOCK)
_STEERING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STEER_LOCK = threading.Lock()
#: the owner tokens of the steer contexts entered in the current thread / task
_OWNED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("innerpissa_steer_owned", default=frozenset())


def _describe_owner(token: tuple) -> str:
    return f"thread or asyncio task (it began in thread {token[1]!r})"


@contextmanager
def _own_steering(model: nn.Module) -> Iterator[None]:
    """Claim `model`'s steering state for this thread / asyncio task: nested `steer` calls in the same one
    are fine (each restores what it found); a `steer` from elsewhere while any is open fails at once."""
    owned = _OWNED.get()
    with _STEER_LOCK:
        entry = _STEERING.get(model)
        if entry is not None and entry[0] not in owned:
            raise SteeringConflict(
                f"this model is being steered by another {_describe_owner(entry[0])}; a model holds one steering "
                "state, shared by every thread (the forward is not slowed down by a per-thread lookup): run "
                "steered work for one model on one thread, or give per-row coefficients "
                "(steer(model, torch.tensor([c1, c2, ...])) runs several coefficients in one batch)")
        if entry is None:
            entry = [(object(), threading.current_thread().name), 0]
            _STEERING[model] = entry
        entry[1] += 1
    reset = _OWNED.set(owned | {entry[0]}) if entry[0] not in owned else None
    try:
        yield
    finally:
        if reset is not None:
            _OWNED.reset(reset)
        with _STEER_LOCK:
            entry[1] -= 1
            if entry[1] == 0 and _STEERING.get(model) is entry:
                del _STEERING[model]


@contextmanager
def steer(model: nn.Module, c: Coeffs) -> Iterator[nn.Module]:
    """Inside the context the adapters run at coefficient `c`; the previous coefficients are always restored.

    `c` is a float, or a 1-D tensor with one coefficient per batch row (so c = -1 and c = +1 share a batch),
    for a model with one adapter. With several adapters give a mapping by name, e.g.
    `steer(model, {"honesty": 1.0, "sentiment": -0.5})` (values may be per-example tensors too); adapters
    the mapping leaves out run at 0. Where two adapters wrap the same module their deltas add.

    Threads: the coefficient is state of the model, shared by all threads (a forward on another thread
    inside the context runs steered, e.g. `generate` on a streaming thread). Steering one model from two
    threads (or asyncio tasks) at once raises `SteeringConflict` in the second, before it changes anything;
    nested `steer` calls in one thread are fine. See docs/RELIABILITY.md.
    """
    coeffs = resolve_coeffs(model, c)
    for a, v in coeffs.items():
        _check_range(model, a, v)
    comps = _components(model)
    merged = [comp for _, _, comp in comps if comp.merged_coeff is not None]
    if merged and any(_nonzero(v) for v in coeffs.values()):
        raise RuntimeError(f"adapter is merged (at c={merged[0].merged_coeff}); unmerge_adapter(model) before steering")
    with _own_steering(model):
        previous = [(comp, comp.coeff) for _, _, comp in comps]
        try:
            for _, a, comp in comps:
                comp.coeff = coeffs[a]
            yield model
        finally:
            for comp, old in previous:
                comp.coeff = old


def _float_coeffs(model: nn.Module, c: float | Mapping[str, float], what: str) -> dict[str, float]:
    """Fixed coefficients by adapter for merging and exports: finite, with the far-range warning of `steer`."""
    coeffs = resolve_coeffs(model, c)
    if any(isinstance(v, Tensor) for v in coeffs.values()):
        raise ValueError(f"{what} needs fixed float coefficients, not per-example tensors")
    if isinstance(c, Mapping):  # only the adapters named take part
        out = {n: float(v) for n, v in coeffs.items() if n in c}
    else:
        out = {n: float(v) for n, v in coeffs.items()}
    for a, v in out.items():
        _check_range(model, a, v)
    return out


def merge_adapter(model: nn.Module, c: float | Mapping[str, float]) -> nn.Module:
    """Add Delta W(c) into every wrapped weight, so a plain forward computes the adapter at c.

    With several adapters give `c` by name, e.g. `{"honesty": 1.0, "sentiment": -0.5}`: each named adapter
    is merged at its coefficient (deltas on a shared module add); unnamed ones stay unmerged.
    """
    coeffs = _float_coeffs(model, c, "merge_adapter")
    check_mergeable(model, coeffs, "merge")
    for _, a, comp in _components(model):
        if a in coeffs:
            comp.merge(coeffs[a])
    return model


def check_mergeable(model: nn.Module, coeffs: Mapping[str, float], what: str) -> None:
    """Refuse (before touching anything) to `what` an adapter whose delta is not a weight change."""
    bad = sorted({a for _, a, comp in _components(model) if a in coeffs and not comp.mergeable})
    if bad:
        raise TypeError(f"cannot {what} adapter(s) {bad}: a trained steering vector adds c * v to a module's output, "
                        "it is not a weight change; steer with it instead (innerpissa.steer)")


def unmerge_adapter(model: nn.Module) -> nn.Module:
    """Subtract every merged Delta W again (exact up to float rounding)."""
    _require_adapter(model)
    for _, _, comp in reversed(_components(model)):
        comp.unmerge()
    return model


def flip_sign(model: nn.Module, name: str | None = None) -> nn.Module:
    """Negate every learnable parameter of adapter `name` (None: the only one): afterwards it equals at c the
    previous adapter at -c."""
    for layer in _layers_or_raise(model, name).values():
        layer.flip_sign()
    return model


def detach_adapter(model: nn.Module, merge_at: float | Mapping[str, float] | None = None,
                   name: str | None = None) -> nn.Module:
    """Remove adapters, putting the original linear layers back where none is left.

    `name` removes that adapter only; None removes all of them. With `merge_at` (a float for one adapter,
    or coefficients by name) the Delta W(c) of each adapter it names is baked into the weights first (one
    already merged stays as merged); the other removed adapters are unmerged.
    """
    known = _require_adapter(model)
    removing = [_resolve_name(model, name)] if name is not None else known
    coeffs: dict[str, float] = {}
    if merge_at is not None:
        if isinstance(merge_at, Mapping):
            coeffs = _float_coeffs(model, merge_at, "detach_adapter(merge_at=...)")
        elif len(removing) > 1:
            raise ValueError(f"model has several adapters {known}; give merge_at by name, e.g. {{{known[0]!r}: 1.0}}")
        else:
            coeffs = {removing[0]: float(merge_at)}
    check_mergeable(model, coeffs, "merge")
    for mname, a, comp in reversed(_components(model)):
        if a not in removing:
            continue
        if a in coeffs:
            if comp.merged_coeff is None:
                comp.merge(coeffs[a])
        else:
            comp.unmerge()
        mod = model.get_submodule(mname)
        if isinstance(mod, AdapterStack):
            mod.remove(a)
            if not len(mod.adapters):
                _set_module(model, mname, mod.base_layer)
        else:
            _set_module(model, mname, comp.base_layer)
    return model


@torch.no_grad()
def delta_weights(model: nn.Module, c: float | Mapping[str, float]) -> dict[str, Tensor]:
    """The total Delta W at coefficients `c` (a float for one adapter, or by name) of every wrapped module."""
    coeffs = _float_coeffs(model, c, "delta_weights")
    check_mergeable(model, coeffs, "take the weight change of")
    out: dict[str, Tensor] = {}
    for mname, a, comp in _components(model):
        if a in coeffs:
            d = comp.delta_weight(coeffs[a])
            out[mname] = d if mname not in out else out[mname] + d.to(out[mname].dtype)
    return out
