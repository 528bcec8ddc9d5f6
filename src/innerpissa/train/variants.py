"""Named training variants for ablations: each maps a `TrainConfig` to a changed copy.

Three kinds:
  * `default-v0` resets the method AND the budget to the project's first default (today's `smollm2-cpu-v0`:
    whole-tail gap and coherence on both rows, either hinge ordering, top-r singular directions, the full
    basis for the direction, a flip on any probe effect; r 32, 3 epochs at 3e-3, logsigmoid, w_mono 10).
  * `v0+mask`, `v0+select`, `v0+dims`, `v0+sign` add one change of issue 8 item 1 to `default-v0`;
    `faithful` adds all four (same v0 budget, so method and budget effects stay apart).
  * One-knob changes of whatever config they get (usually the preset's): `preset` (unchanged), `r32`,
    `r128`, `depth0.5`, `depth0.8`, `s-none`, `s-add`, `no-vrot`, `logsigmoid`, `raw`, `shift`, `layers4`,
    `layers12` (adapted blocks), `wcoh10`, `wcoh0` (coherence weight), `lr2x`, `lr4x`, `epochs2x` (budget);
    what produces the inner loss's effect: `wproj0` (no projection term), `coh-both` (coherence on both rows),
    `wmono20` (w_mono below w_coh, as METHOD asks), `dims-all` / `dims-diff` (the direction unmasked, or
    truncated to its largest |mean difference| coordinates); `inner-neutral` (C3: the inner loss read on the pairs'
    persona-free versions).
  * Objectives on the model's own outputs (`train/outputs.py`): `pref`, `pref-nll` (with the chosen
    completion's NLL), `pref-clean` (without looping or persona-naming completions), `dpo`, `sft`, `distill` (the
    capacity check: carry the mean-difference vector's effect); the adapter's capacity under `pref-nll`:
    `pref-nll-top` (top-r directions), `pref-nll-all` (every block of the depth range), `pref-nll-l12`,
    `pref-nll-rotu` (U rotated too), `pref-nll-lr2x`, and `pref-nll-top-*` (top-r with one more change); and the same objectives for the other kinds: `lora-pref`,
    `vector-pref`, `lora-pref-nll`, `vector-pref-nll` (so one objective shows what the parametrisation adds).
Model, output folder, device, seed and data source are never touched, so every variant of an ablation trains
on the same pairs.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable

from innerpissa.train.config import TrainConfig, v0_budget, v0_method

Variant = Callable[[TrainConfig], TrainConfig]


def _fits(value: object, hint: object) -> bool:
    """Whether `value` is of the annotated type (Literal, unions, None and plain classes; others pass)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def set_fields(cfg: TrainConfig, changes: dict[str, object]) -> TrainConfig:
    """`cfg` with dotted fields set (`{"loss.w_coh": 10.0}`). A name that is not a field of the config tree
    raises, naming the fields that exist there (a typo must never add an attribute nobody reads), and so does
    a value that is not of the field's type."""
    for key, value in changes.items():
        obj, *path = [cfg, *key.split(".")]
        for i, part in enumerate(path):
            hints = typing.get_type_hints(type(obj))
            names = [f.name for f in dataclasses.fields(obj)]
            if part not in names:
                where = ".".join(path[:i]) or "TrainConfig"
                raise ValueError(f"variant field {key!r}: {where} has no field {part!r}; valid: {', '.join(names)}")
            if i < len(path) - 1:
                obj = getattr(obj, part)
            elif not _fits(value, hints[part]):
                raise TypeError(f"variant field {key!r}: {value!r} is not a {hints[part]}")
        setattr(obj, path[-1], value)
    return cfg


def _set(**changes: object) -> Variant:
    """A variant setting fields, written `loss__w_coh=10.0` for `loss.w_coh` (checked when it runs)."""
    return lambda cfg: set_fields(cfg, {k.replace("__", "."): v for k, v in changes.items()})


def _then(*fns: Variant) -> Variant:
    def apply(cfg: TrainConfig) -> TrainConfig:
        for f in fns:
            cfg = f(cfg)
        return cfg

    return apply


def _pref_nll(**changes: object) -> Variant:
    """The `pref-nll` objective (preference plus the chosen completion's NLL) with more fields set."""
    return _set(objective="pref", outputs__w_nll=1.0, **changes)


def _lr_times(k: float) -> Variant:
    return lambda cfg: set_fields(cfg, {"lr": cfg.lr * k})


_V0 = _then(v0_budget, v0_method)
_MASK = _set(loss__mask_tokens=4, loss__coh_rows="pos")
_SELECT = _set(adapter__select="data")
_DIMS = _set(direction__dims=64)
_SIGN = _set(loss__mono_ordering="forward", calibrate_flip="significant")

VARIANTS: dict[str, Variant] = {
    "default-v0": _V0,
    "v0+mask": _then(_V0, _MASK),
    "v0+select": _then(_V0, _SELECT),
    "v0+dims": _then(_V0, _DIMS),
    "v0+sign": _then(_V0, _SIGN),
    "faithful": _then(_V0, _MASK, _SELECT, _DIMS, _SIGN),
    "preset": lambda cfg: cfg,
    "r32": _set(adapter__r=32, adapter__rotation_blocks=1),
    "r128": _set(adapter__r=128, adapter__rotation_blocks=1),
    "depth0.5": _set(direction__depth=0.5),
    "depth0.8": _set(direction__depth=0.8),
    "s-none": _set(adapter__s_mode="none"),
    "s-add": _set(adapter__s_mode="add"),
    "no-vrot": _set(adapter__rotate_v=False),
    "logsigmoid": _set(loss__kind="logsigmoid"),
    "raw": _set(loss__kind="raw"),
    "shift": _set(loss_target="shift"),
    "shift-moved": _set(loss_target="shift_moved", loss__w_mono=0.0),
    # issue 17 C3: the inner loss on persona-free rows (the direction still from the pairs)
    "inner-neutral": _set(loss_inputs="neutral", loss_target="shift_moved", loss__w_mono=0.0),
    # the loss read where steering vectors act: the block's output (residual stream), raw coordinates
    "resid-raw": _set(direction__module="", direction__where="output", direction__basis="raw", direction__dims=None),
    "resid-raw-shift": _set(direction__module="", direction__where="output", direction__basis="raw",
                            direction__dims=None, loss_target="shift_moved", loss__w_mono=0.0),
    "layers4": _set(adapter__n_layers=4),
    "layers12": _set(adapter__n_layers=12),
    "wcoh10": _set(loss__w_coh=10.0),
    "wcoh0": _set(loss__w_coh=0.0),
    # what produces the inner loss's effect (issue 17 part B)
    "wproj0": _set(loss__w_proj=0.0),
    "coh-both": _set(loss__coh_rows="both"),
    "wmono20": _set(loss__w_mono=20.0),
    "dims-all": _set(direction__dims=None),
    "dims-diff": _set(direction__dims_rule="difference"),
    # objectives on the model's own outputs (train/outputs.py), for each trainable kind
    "pref": _set(objective="pref"),
    "pref-nll": _pref_nll(),
    "pref-clean": _set(objective="pref", outputs__drop_loops=True, outputs__drop_persona=True),
    "pref-nll-clean": _pref_nll(outputs__drop_loops=True, outputs__drop_persona=True),
    "pref-nll-cfg": _pref_nll(outputs__guidance=2.0),
    "pref-nll-cfg-clean": _pref_nll(outputs__guidance=2.0, outputs__drop_loops=True, outputs__drop_persona=True),
    "pref-nll-l12": _pref_nll(adapter__n_layers=12),
    # capacity under pref-nll (issue 17: what limits the adapter when the objective is right?)
    "pref-nll-top": _pref_nll(adapter__select="top"),
    "pref-nll-all": _pref_nll(adapter__n_layers=0),
    "pref-nll-rotu": _pref_nll(adapter__rotate_u=True),
    "pref-nll-lr2x": _then(_pref_nll(), _lr_times(2)),
    # top-r directions with one more change each
    "pref-nll-top-clean": _pref_nll(adapter__select="top", outputs__drop_loops=True),
    "pref-nll-top-cfg": _pref_nll(adapter__select="top", outputs__guidance=2.0),
    "pref-nll-top-r128": _pref_nll(adapter__select="top", adapter__r=128),
    "pref-nll-top-lr2x": _then(_pref_nll(adapter__select="top"), _lr_times(2)),
    "pref-nll-top-mult": _pref_nll(adapter__select="top", adapter__s_mode="mult"),
    "dpo": _set(objective="dpo", outputs__beta=10.0),
    "sft": _set(objective="sft"),
    "distill": _set(objective="distill"),
    "lora-pref": _set(method="lora", objective="pref"),
    "vector-pref": _set(method="vector", objective="pref"),
    "lora-pref-nll": _pref_nll(method="lora"),
    "vector-pref-nll": _pref_nll(method="vector"),
    "lr2x": _lr_times(2),
    "lr4x": _lr_times(4),
    "epochs2x": lambda cfg: _set(epochs=cfg.epochs * 2)(cfg),
}


def apply_variant(name: str, cfg: TrainConfig) -> TrainConfig:
    """A changed deep copy of `cfg` (the input is left as it was); unknown names raise with the list."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    out = VARIANTS[name](copy.deepcopy(cfg))
    out.adapter.__post_init__()
    out.loss.__post_init__()
    return out
