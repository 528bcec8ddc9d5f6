"""The InnerPiSSA adapter: config, layer, model-level operations, and save/load/export."""

from innerpissa.adapter.config import AdapterConfig, select_blocks
from innerpissa.adapter.io import (
    export_lora,
    export_loras,
    export_merged,
    load_adapter,
    read_adapter_meta,
    save_adapter,
)
from innerpissa.adapter.layer import InnerPiSSALinear, cayley, rotation, scaled_singular_values, top_r_svd
from innerpissa.adapter.model import (
    adapter_config,
    adapter_layers,
    adapter_names,
    adapter_parameters,
    attach,
    delta_weights,
    detach_adapter,
    flip_sign,
    merge_adapter,
    steer,
    unmerge_adapter,
)
from innerpissa.adapter.stack import DEFAULT_ADAPTER, AdapterStack

__all__ = [
    "DEFAULT_ADAPTER", "AdapterConfig", "AdapterStack", "InnerPiSSALinear", "adapter_config", "adapter_layers",
    "adapter_names", "adapter_parameters", "attach",
    "cayley", "delta_weights", "detach_adapter", "export_lora", "export_loras", "export_merged", "flip_sign", "load_adapter", "merge_adapter",
    "read_adapter_meta", "rotation", "save_adapter", "scaled_singular_values", "select_blocks", "steer",
    "top_r_svd", "unmerge_adapter",
]
