"""A trained steering vector scaled by c: the third adapter kind, beside InnerPiSSA and LoRA(c).

`CoeffVectorLinear` computes `W x + c v`: a learned vector `v` [d_out] added to the wrapped module's output at
every position. On the residual writers (`o_proj`, `down_proj`) that is a steering vector added to the
residual stream (what repeng, CAA and BiPO apply), trained here by any of the trainer's objectives on the same
modules of the same blocks as an InnerPiSSA adapter, so a comparison under one objective shows what the
singular-vector parametrisation adds over a plain vector. `v` starts at 0 (c = 0 and every c are then the
base model); unlike a rotation, a vector's gradient is not zero there.

A vector is not a weight change: it cannot be merged into a bias-free `nn.Linear` or written as a LoRA, so
`merge_adapter` and `export_lora` refuse it with a message.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from innerpissa.adapter.config import AdapterConfig
from innerpissa.adapter.layer import Coeff, SteerableLinear
from innerpissa.adapter.model import add_component, base_linear, check_attachable, freeze_base, target_names
from innerpissa.adapter.stack import DEFAULT_ADAPTER


class CoeffVectorLinear(SteerableLinear):
    """`W x + c v` with a trainable `v` [d_out] (zero at init)."""

    mergeable = False

    def __init__(self, base_layer: nn.Linear, cfg: AdapterConfig | None = None):
        super().__init__(base_layer)
        self.cfg = cfg or AdapterConfig()
        w = base_layer.weight
        self.vector = nn.Parameter(torch.zeros(w.shape[0], dtype=getattr(torch, self.cfg.dtype), device=w.device))

    def delta_out(self, x: Tensor, c: Coeff) -> Tensor:
        v = self.vector.expand(*x.shape[:-1], -1)
        if isinstance(c, Tensor):
            return v * c.to(v.dtype).reshape(-1, *([1] * (v.dim() - 1)))
        return v * c

    def delta_weight(self, c: float) -> Tensor:
        raise TypeError("a trained steering vector adds c * v to the output; it is not a weight change, so it "
                        "cannot be merged into the weights or exported as a LoRA (steer with it instead)")


def attach_vector(model: nn.Module, config: AdapterConfig, name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Wrap the modules an InnerPiSSA adapter with `config` would wrap with a trainable vector scaled by c."""
    check_attachable(model, name)
    names = target_names(model, config)
    freeze_base(model)
    for mname in names:
        add_component(model, mname, name, CoeffVectorLinear(base_linear(model.get_submodule(mname)), config))
    return model
