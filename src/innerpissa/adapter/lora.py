"""LoRA scaled by c: an adapter kind beside InnerPiSSA, trained with the same loss (the LoRA(c) baseline).

`CoeffLoRALinear` computes `W x + c B A x`: the usual LoRA with the coefficient as its scale, so the trainer,
`steer` and the evaluation treat it exactly like the InnerPiSSA adapter. The journal expects it to do worse:
a LoRA has no reason to make -c the mirror image of +c, while a Cayley rotation is reversible by design.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from innerpissa.adapter.config import AdapterConfig
from innerpissa.adapter.layer import Coeff, SteerableLinear
from innerpissa.adapter.model import adapter_layers, add_component, base_linear, target_names
from innerpissa.adapter.stack import DEFAULT_ADAPTER


class CoeffLoRALinear(SteerableLinear):
    """`W x + c B A x` (B [d_out, r], A [r, d_in]); B starts small but non-zero so +c and -c differ at once."""

    def __init__(self, base_layer: nn.Linear, r: int, seed: int = 0, init_b_std: float = 1e-3,
                 cfg: AdapterConfig | None = None):
        super().__init__(base_layer)
        self.cfg = cfg or AdapterConfig(r=r)
        d_out, d_in = base_layer.weight.shape
        if r > min(d_in, d_out):
            raise ValueError(f"rank r={r} exceeds min(d_in={d_in}, d_out={d_out}); lower r")
        g = torch.Generator().manual_seed(seed)
        dev = base_layer.weight.device
        self.lora_A = nn.Parameter((torch.randn(r, d_in, generator=g) / math.sqrt(d_in)).to(dev))
        self.lora_B = nn.Parameter((torch.randn(d_out, r, generator=g) * init_b_std).to(dev))
        self.r = r

    def delta_out(self, x: Tensor, c: Coeff) -> Tensor:
        y = x.to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T
        if isinstance(c, Tensor):
            return y * c.to(y.dtype).reshape(-1, *([1] * (y.dim() - 1)))
        return y * c

    def delta_weight(self, c: float) -> Tensor:
        return float(c) * self.lora_B @ self.lora_A

    def lora_factors(self, c: float) -> tuple[Tensor, Tensor]:
        """(c B, A): the layer at c as an ordinary LoRA (for `export_lora`)."""
        with torch.no_grad():
            return float(c) * self.lora_B, self.lora_A.clone()

    def flip_sign(self) -> None:
        with torch.no_grad():  # negating one factor negates the product
            self.lora_B.neg_()


def attach_lora(model: nn.Module, config: AdapterConfig, name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Wrap the same modules an InnerPiSSA adapter with `config` would, with rank-r LoRA scaled by c."""
    if adapter_layers(model):
        raise RuntimeError("model already has steerable layers attached; detach_adapter(model) first")
    for p in model.parameters():
        p.requires_grad_(False)
    for i, mname in enumerate(target_names(model, config)):
        layer = CoeffLoRALinear(base_linear(model.get_submodule(mname)), config.r, seed=config.seed * 100_003 + i,
                                cfg=config)
        add_component(model, mname, name, layer)
    return model
