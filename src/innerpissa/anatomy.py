"""How innerpissa reads a Hugging Face decoder: one rule for "the decoder blocks" and one for "decoder vs
LM head", used by the adapter, the trainer, the evaluation harness and the baselines.

- The blocks are the `nn.ModuleList` whose length is `config.num_hidden_layers` (the first such list in
  module order); a model whose config does not say falls back to its longest `nn.ModuleList`.
- Hooks: `CapturePoint` names a module's input or output (or an `output_hidden_states` index) and
  `HiddenCapture` holds the forward hooks that read them; `gather_last` takes each row's last real tokens.
- The (decoder, head) split is usable when the logits are exactly `head(decoder(...).last_hidden_state)`:
  a linear output head, a decoder distinct from the model, and no logit transform in the config (soft-capping,
  scaling). Callers that can fall back to a full forward ask with `strict=False` and get None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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


def block_name(model: nn.Module, layer: int) -> str:
    """Full name of decoder block `layer` (negative counts from the end)."""
    prefix, n = decoder_blocks(model)
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} out of range for a model with {n} decoder blocks")
    return f"{prefix}.{layer % n}"


def default_layers(model: nn.Module, start: float = 0.4, stop: float = 0.8) -> list[int]:
    """Middle-to-late blocks [round(start L), round(stop L)) (METHOD section 8), at least one block."""
    _, n = decoder_blocks(model)
    lo = min(n - 1, max(0, round(start * n)))
    return list(range(lo, max(lo + 1, min(n, round(stop * n)))))


def context_length(model: nn.Module) -> int | None:
    """How many positions the model was trained for (`max_position_embeddings` or its aliases, times a RoPE
    scaling factor when the config does not already count it); None when the config does not say."""
    cfg = getattr(model, "config", None)
    n = next((getattr(cfg, k) for k in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
              if isinstance(getattr(cfg, k, None), int)), None)
    scaling = getattr(cfg, "rope_scaling", None)
    if n is not None and isinstance(scaling, dict) and "original_max_position_embeddings" not in scaling:
        factor = scaling.get("factor")
        if isinstance(factor, int | float) and factor > 1:
            n = int(n * factor)
    return n


def check_context(model: nn.Module, lengths: Sequence[int], new_tokens: int = 0, what: str = "prompt") -> None:
    """Refuse inputs longer than the model's context (they would run, silently, on positions it never saw and
    give garbage): a `ValueError` naming the first such input, its length and the limit."""
    limit = context_length(model)
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n + new_tokens > limit:
            extra = f" plus {new_tokens} new tokens" if new_tokens else ""
            raise ValueError(f"{what} {i} has {n} tokens{extra}, more than the model's context of {limit} positions; "
                             "shorten it" + (" or lower --max-new-tokens" if new_tokens else ""))


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


# ---------------------------------------------------------------- hooks

HIDDEN_STATES_PREFIX = "hidden_states."


class StopForward(Exception):
    """Raised by a `HiddenCapture(stop_early=True)` hook once everything needed has been captured."""


@dataclass(frozen=True)
class CapturePoint:
    """A module's `output` or `input` by name, or `hidden_states.<i>` (HF `output_hidden_states` index)."""

    module: str
    where: str = "output"

    def __post_init__(self) -> None:
        if self.where not in ("output", "input"):
            raise ValueError(f"where must be 'output' or 'input', got {self.where!r}")

    @property
    def key(self) -> str:
        return self.module if self.is_hidden_states else f"{self.module}:{self.where}"

    @property
    def is_hidden_states(self) -> bool:
        return self.module.startswith(HIDDEN_STATES_PREFIX)


class HiddenCapture:
    """Context manager holding forward hooks; after each forward, `hidden[key]` is the [B, T, d] tensor.

    Tensors keep their graph (the trainer back-propagates through them); wrap in `torch.no_grad()` for the
    reference pass. For `hidden_states.<i>` points, run the forward with `output_hidden_states=True` and call
    `read_outputs(outputs)` (see `needs_hidden_states`). `stop_early` raises `StopForward` as soon as every
    point is captured, so a direction-only pass skips the later blocks and the LM head (catch it).
    """

    def __init__(self, model: nn.Module, points: Sequence[CapturePoint], stop_early: bool = False):
        self.model, self.points = model, list(points)
        self.stop_early = stop_early and not any(p.is_hidden_states for p in self.points)
        self.hidden: dict[str, Tensor] = {}
        self._handles: list = []

    @property
    def needs_hidden_states(self) -> bool:
        return any(p.is_hidden_states for p in self.points)

    def _hook(self, key: str, where: str):
        def hook(_mod, args, kwargs, output=None):
            if where == "input":
                x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input", next(iter(kwargs.values()))))
            else:
                x = output[0] if isinstance(output, tuple | list) else output
            self.hidden[key] = x
            if self.stop_early and all(p.key in self.hidden for p in self.points):
                raise StopForward

        return hook

    def __enter__(self) -> HiddenCapture:
        for p in self.points:
            if p.is_hidden_states:
                continue
            mod = self.model.get_submodule(p.module)
            if p.where == "input":
                h = mod.register_forward_pre_hook(self._hook(p.key, "input"), with_kwargs=True)
            else:
                h = mod.register_forward_hook(self._hook(p.key, "output"), with_kwargs=True)
            self._handles.append(h)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def read_outputs(self, outputs) -> None:
        """Copy `hidden_states.<i>` points out of a model output run with `output_hidden_states=True`."""
        for p in self.points:
            if p.is_hidden_states:
                hs = getattr(outputs, "hidden_states", None)
                if hs is None:
                    raise ValueError(f"{p.key} needs the forward to run with output_hidden_states=True")
                self.hidden[p.key] = hs[int(p.module.removeprefix(HIDDEN_STATES_PREFIX))]


def gather_last(hidden: Tensor, attention_mask: Tensor, n: int) -> Tensor:
    """[B, T, d] -> [B, n, d]: the last `n` real tokens of each row, in order (any padding side)."""
    am = attention_mask.bool()
    T = am.shape[-1]
    pos = torch.arange(T, device=am.device)
    last = torch.where(am, pos, torch.full_like(pos, -1)).amax(-1)  # [B]
    idx = last[:, None] - torch.arange(n - 1, -1, -1, device=am.device)  # [B, n]
    if (idx < 0).any() or not am.gather(1, idx.clamp(min=0)).all():
        raise ValueError(f"some rows have fewer than {n} contiguous real tokens at their end")
    return hidden.gather(1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
