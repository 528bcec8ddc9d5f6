"""Named training variants for ablations: each maps a `TrainConfig` to a changed copy.

Three kinds:
  * `default-v0` resets the method AND the budget to the project's first default (today's `smollm2-cpu-v0`:
    whole-tail gap and coherence on both rows, either hinge ordering, top-r singular directions, the full
    basis for the direction, a flip on any probe effect; r 32, 3 epochs at 3e-3, logsigmoid, w_mono 10).
  * `v0+mask`, `v0+select`, `v0+dims`, `v0+sign` add one change of issue 8 item 1 to `default-v0`;
    `faithful` adds all four (same v0 budget, so method and budget effects stay apart).
  * One-knob changes of whatever config they get (usually the preset's): `preset` (unchanged), `r32`,
    `r128`, `depth0.5`, `depth0.8`, `s-none`, `s-add`, `no-vrot`, `logsigmoid`, `raw`, `shift`, `layers4`,
    `layers12` (adapted blocks), `wcoh10`, `wcoh0` (coherence weight), `lr2x`, `epochs2x` (budget).
Model, output folder, device, seed and data source are never touched, so every variant of an ablation trains
on the same pairs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from innerpissa.train.config import TrainConfig

Variant = Callable[[TrainConfig], TrainConfig]


def v0_method(cfg: TrainConfig) -> TrainConfig:
    """Items 1-4 of issue 8 switched off (the method as first implemented); budget untouched."""
    cfg.loss.mask_tokens = 0
    cfg.loss.coh_rows = "both"
    cfg.loss.mono_ordering = "batch"
    cfg.adapter.select = "top"
    cfg.direction.dims = None
    cfg.calibrate_flip = "always"
    return cfg


def v0_budget(cfg: TrainConfig) -> TrainConfig:
    """The first `smollm2-cpu` budget and loss: r 32 on 8 blocks, 200 pairs, 3 epochs of 8 pairs at lr 3e-3
    (10 % warm-up, no decay, no early stop), logsigmoid projection (beta 1, margin 1, scaled), w_mono 10."""
    from innerpissa.train.losses import LossConfig

    cfg.adapter.r, cfg.adapter.n_layers, cfg.adapter.rotation_blocks = 32, 8, 1
    cfg.data.n_pairs = 200
    cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.patience = 3, 8, 1, 0
    cfg.lr, cfg.warmup, cfg.weight_decay = 3e-3, 0.1, 0.0
    cfg.loss = LossConfig(scale_to_ref=True, beta=1.0, kind="logsigmoid", w_mono=10.0, w_coh=40.0)
    cfg.loss_target = "separation"
    return cfg


def _set(**changes: object) -> Variant:
    def apply(cfg: TrainConfig) -> TrainConfig:
        for key, value in changes.items():
            obj = cfg
            *path, last = key.split("__")
            for p in path:
                obj = getattr(obj, p)
            setattr(obj, last, value)
        return cfg

    return apply


def _then(*fns: Variant) -> Variant:
    def apply(cfg: TrainConfig) -> TrainConfig:
        for f in fns:
            cfg = f(cfg)
        return cfg

    return apply


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
    # the loss read where steering vectors act: the block's output (residual stream), raw coordinates
    "resid-raw": _set(direction__module="", direction__where="output", direction__basis="raw", direction__dims=None),
    "resid-raw-shift": _set(direction__module="", direction__where="output", direction__basis="raw",
                            direction__dims=None, loss_target="shift_moved", loss__w_mono=0.0),
    "layers4": _set(adapter__n_layers=4),
    "layers12": _set(adapter__n_layers=12),
    "wcoh10": _set(loss__w_coh=10.0),
    "wcoh0": _set(loss__w_coh=0.0),
    "lr2x": lambda cfg: _set(lr=cfg.lr * 2)(cfg),
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
