"""Several named adapters on one linear layer: `AdapterStack` holds the frozen `nn.Linear` once and a dict of
named steerable components (InnerPiSSA, LoRA-by-c, ...), each with its own coefficient.

    y = W x + sum_a Delta_a(x, c_a)

Where two adapters wrap the same module their deltas add (summed in name order). A component at c = 0 (or merged) is skipped, so
with every coefficient at 0 the layer computes exactly `base_layer(x)`.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from innerpissa.adapter.layer import SteerableLinear

DEFAULT_ADAPTER = "default"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_RESERVED = set(dir(nn.ModuleDict()))  # attribute names a ModuleDict key may not take


def check_adapter_name(name: str) -> str:
    """An adapter name is a short identifier (letters, digits, `_`, `-`), usable as a module name."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in _RESERVED:
        raise ValueError(f"invalid adapter name {name!r}: use letters, digits, '_' or '-', starting with a letter "
                         "(e.g. 'honesty')")
    return name


class AdapterStack(nn.Module):
    """A frozen `nn.Linear` (`base_layer`) plus named steerable components whose deltas add.

    The components share the stack's `base_layer` (held as a plain reference, not a submodule, so the base
    weight appears once in `state_dict`); merging a component adds its delta into that shared weight.
    """

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"AdapterStack wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()

    def add(self, name: str, component: SteerableLinear) -> None:
        check_adapter_name(name)
        if name in self.adapters:
            raise RuntimeError(f"this layer already has an adapter named {name!r}")
        if component.base_layer is not self.base_layer:
            raise ValueError("the component must wrap this stack's base_layer")
        component._modules.pop("base_layer", None)  # keep the shared layer, but register it only here
        component.__dict__["base_layer"] = self.base_layer
        self.adapters[name] = component
        # keep the components sorted by name, so the sum (and its float rounding) does not depend on the order
        # in which adapters were attached or loaded
        ordered = sorted(self.adapters.items())
        self.adapters.clear()
        self.adapters.update(ordered)

    def remove(self, name: str) -> SteerableLinear:
        component = self.adapters[name]
        del self.adapters[name]
        return component

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        for component in self.adapters.values():
            delta = component.steered_delta(x)
            if delta is not None:
                out = out + delta.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"adapters={list(self.adapters)}"
