"""innerpissa: trainable, reversible steering of language models in the SVD basis of their weights.

    model, tok = innerpissa.load_model("smollm2")
    innerpissa.attach(model, innerpissa.AdapterConfig(r=32))
    with innerpissa.steer(model, 1.0): ...      # toward the concept; -1 away; 0 is the base model
"""

from innerpissa.adapter import (
    AdapterConfig,
    adapter_layers,
    adapter_names,
    adapter_parameters,
    attach,
    delta_weights,
    detach_adapter,
    export_lora,
    export_loras,
    export_merged,
    flip_sign,
    load_adapter,
    merge_adapter,
    read_adapter_meta,
    save_adapter,
    steer,
    unmerge_adapter,
)
from innerpissa.models import load_model
from innerpissa.steering import AdapterSteerer, NoSteering, Steerer

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig", "AdapterSteerer", "NoSteering", "Steerer", "adapter_layers", "adapter_names",
    "adapter_parameters", "attach",
    "delta_weights", "detach_adapter", "export_lora", "export_loras", "export_merged", "flip_sign", "load_adapter", "load_model",
    "merge_adapter", "read_adapter_meta", "save_adapter", "steer", "unmerge_adapter",
]
