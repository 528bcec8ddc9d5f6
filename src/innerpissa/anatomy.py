"""How innerpissa reads a Hugging Face decoder: one rule for "the decoder blocks" and one for "decoder vs
LM head", used by the adapter, the trainer, the evaluation harness and the baselines.

- The blocks are the `nn.ModuleList` whose length is `config.num_hidden_layers` (the first such list in
  module order); a model whose config does not say falls back to its longest `nn.ModuleList`.
- The (decoder, head) split is usable when the logits are exactly `head(decoder(...).last_hidden_state)`:
  a linear output head, a decoder distinct from the model, and no logit transform in the config (soft-capping,
  scaling). Callers that can fall back to a full forward ask with `strict=False` and get None.
"""

from __future__ import annotations

from torch import nn

#: config attributes that make the logits something other than head(last hidden state)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def decoder_blocks(model: nn.Module) -> tuple[str, int]:
    """Name and length of the model's list of decoder blocks."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    longest: tuple[str, int] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if n is not None and len(mod) == n:
            return name, len(mod)
        if longest is None or len(mod) > longest[1]:
            longest = (name, len(mod))
    if n is None and longest is not None:
        return longest
    raise ValueError(f"{type(model).__name__} has no nn.ModuleList of its {n} decoder blocks; not a supported "
                     "decoder (innerpissa supports Hugging Face decoder-only causal LMs such as Llama, Qwen, "
                     "Gemma, Mistral and SmolLM)")


def decoder_and_head(model: nn.Module, strict: bool = True) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, output head) such that logits == head(decoder(...).last_hidden_state), so logits can be
    computed for a few positions only. With `strict`, a model without that layout raises; otherwise None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    why = None
    if decoder is None or decoder is model or not isinstance(head, nn.Linear):
        why = "expected a decoder and a linear output head"
    else:
        cfg = getattr(model, "config", None)
        bad = [a for a in LOGIT_TRANSFORMS if getattr(cfg, a, None) not in (None, 1, 1.0)]
        if bad:
            why = f"it transforms its logits ({bad[0]})"
    if why is None:
        return decoder, head
    if strict:
        raise ValueError(f"{type(model).__name__}: {why}; not supported here yet")
    return None
