"""What a row does with its next-token logits: pick a token (greedy, or sampled with temperature and top-p
from the row's own random generator), and turn its tokens into text, ending at a stop string.

Each row samples from its own `torch.Generator`, seeded by the request, so a seeded request draws the same
tokens whichever other rows share its batch; greedy (temperature 0) takes the arg-max as
`innerpissa generate` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def next_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """The next token from one row's logits [vocab] (float32): the arg-max at temperature 0, else a draw
    from softmax(logits / temperature) restricted to the smallest set of tokens whose probability reaches
    `top_p` (always at least the most likely one)."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        p, idx = probs.sort(descending=True)
        keep = (p.cumsum(0) - p) < top_p  # the tokens before which less than top_p was reached
        p = p * keep
        return int(idx[torch.multinomial(p, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


class TextStream:
    """A row's text as its tokens arrive: `push(token)` returns the new text that is safe to show and
    whether a stop string was reached (the text then ends just before it). Text that could still turn
    into a stop string, or that ends inside a multi-byte character, is held back until it is decided."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # the text shown so far
        self.stopped = False

    def _decoded(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        full = self._decoded()
        # text already shown never holds the start of a stop string (such a tail is held back below)
        hits = [at for s in self.stop if (at := full.find(s, len(self.text))) >= 0]
        if hits:
            self.stopped = True
            return self._emit(full[:min(hits)]), True
        safe = len(full.rstrip("\ufffd"))  # an incomplete UTF-8 sequence decodes to U+FFFD: wait for the rest
        hold = max((n for s in self.stop for n in range(1, len(s)) if full[:safe].endswith(s[:n])), default=0)
        return self._emit(full[:safe - hold]), False

    def finish(self) -> str:
        """What is still held back once the row ends without a stop string."""
        return "" if self.stopped else self._emit(self._decoded())

    def _emit(self, upto: str) -> str:
        new = upto[len(self.text):] if upto.startswith(self.text) else ""
        self.text += new
        return new
