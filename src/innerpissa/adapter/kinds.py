"""The table of adapter kinds that attaching, saving and loading consult (one entry per kind, no branches).

A kind is a steerable layer class, the tensors saved per layer, and how to attach it to a model with an
`AdapterConfig` (`fresh=False` when loading: the saved tensors are copied in afterwards, so InnerPiSSA skips
its SVD).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from innerpissa.adapter.config import AdapterConfig
from innerpissa.adapter.layer import InnerPiSSALinear, SteerableLinear
from innerpissa.adapter.lora import CoeffLoRALinear, attach_lora
from innerpissa.adapter.model import attach
from innerpissa.adapter.stack import DEFAULT_ADAPTER
from innerpissa.adapter.vector import CoeffVectorLinear, attach_vector


@dataclass(frozen=True)
class AdapterKind:
    layer: type[SteerableLinear]
    tensors: tuple[str, ...]
    """Tensors saved per wrapped module (attributes of the layer; None-valued ones are skipped)."""
    attach: Callable[..., nn.Module]
    """attach(model, config, name, fresh) -> model."""


KINDS: dict[str, AdapterKind] = {
    "innerpissa": AdapterKind(InnerPiSSALinear, ("theta_v", "theta_u", "delta", "U", "S", "V"),
                              lambda m, cfg, name=DEFAULT_ADAPTER, fresh=True: attach(m, cfg, init_svd=fresh, name=name)),
    "lora": AdapterKind(CoeffLoRALinear, ("lora_A", "lora_B"),
                        lambda m, cfg, name=DEFAULT_ADAPTER, fresh=True: attach_lora(m, cfg, name=name)),
    "vector": AdapterKind(CoeffVectorLinear, ("vector",),
                          lambda m, cfg, name=DEFAULT_ADAPTER, fresh=True: attach_vector(m, cfg, name=name)),
}


def attach_kind(model: nn.Module, kind: str, config: AdapterConfig, name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Attach a fresh adapter of `kind` (innerpissa, lora or vector) to the modules `config` selects."""
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; use one of {sorted(KINDS)}")
    return KINDS[kind].attach(model, config, name, True)
